#!/usr/bin/env bash
# Lists the library's module dependencies and checks that they have no cycle.
#
# A module is a file of src/ (`func.rs` is `func`, `func/key.rs` is
# `func/key`). An edge X -> Y is a `crate::…` path in X's code (comments
# left out) that names Y, the deepest module file the path reaches
# (`crate::func::key::Args` is `func/key`), including names used through the
# crate root's re-exports (`crate::CacheNode` is `node`), which lib.rs's
# `pub use` lines resolve. `super::` paths between a file and its parent are
# the inside of one module and are not listed.
#
# Prints the edges, then the rooms (a file under src/ with the files of its
# folder: `func` is func.rs and func/*.rs) in layers, each room using only
# rooms of lower layers, and exits 1 naming the rooms on a cycle when there
# is one. The files of one room may use each other; rooms may not.
# Usage: scripts/module-deps.sh [src-dir]
set -euo pipefail
src="${1:-$(dirname "$0")/../src}"
cd "$src"

edges=$(perl -e '
  use strict; use warnings;
  sub code { my ($f) = @_; open my $h, "<", $f or die "$f: $!"; local $/; my $s = <$h>;
             $s =~ s{//[^\n]*}{}g; return $s; }
  # The deepest module file a path (a::b::c) reaches, or undef.
  sub module_of { my @seg = split /::/, $_[0]; my $found;
    for my $i (1 .. @seg) { my $m = join "/", @seg[0 .. $i - 1]; last unless -f "$m.rs"; $found = $m; }
    return $found; }
  # Root re-exports: name -> module.
  my %root; my $lib = code("lib.rs");
  while ($lib =~ /pub use (?:crate::)?([a-z_]+(?:::[a-z_]+)*)::(\{[^;]*\}|[A-Za-z_0-9]+)\s*;/g) {
    my ($path, $names) = ($1, $2);
    my $m = module_of($path) or next;
    $root{$_} = $m for ($names =~ /([A-Za-z_][A-Za-z_0-9]*)(?:\s+as\s+[A-Za-z_0-9]+)?/g);
  }
  my %edges;
  for my $f (sort split /\n/, `find . -name "*.rs" -not -path "./bin/*"`) {
    $f =~ s{^\./}{}; (my $me = $f) =~ s{\.rs$}{};
    next if $me eq "lib";
    my $s = code($f);
    my @deps;
    while ($s =~ /crate::((?:[a-z_][a-z_0-9]*::)*)([A-Za-z_][A-Za-z_0-9]*)/g) {
      my ($path, $last) = ($1, $2);
      $path =~ s/::$//;
      my $m = module_of($path eq "" ? $last : "${path}::$last") // ($path eq "" ? $root{$last} : module_of($path));
      push @deps, $m if defined $m;
    }
    while ($s =~ /crate::\{([^;]*?)\}\s*;/g) {
      for my $n ($1 =~ /(?:^|[\s,{])([A-Za-z_][A-Za-z_0-9]*(?:::[A-Za-z_][A-Za-z_0-9]*)*)/g) {
        my $m = module_of($n) // $root{$n} // module_of(join "::", (split /::/, $n)[0 .. 0]);
        push @deps, $m if defined $m;
      }
    }
    for my $dep (@deps) {
      $edges{"$me $dep"} = 1 unless $dep eq $me || index("$me/", "$dep/") == 0;
    }
  }
  print "$_\n" for sort keys %edges;
')

echo "# edges (module -> module it uses)"
echo "$edges" | sed -e 's/ / -> /'
echo
modules=$(find . -name '*.rs' -not -path './bin/*' | sed -e 's:^\./::' -e 's/\.rs$//' | grep -vx lib | sort)
# Layers: a module's layer is one more than the highest layer of what it
# uses (leaves are layer 0); modules left without a layer are on a cycle.
{ echo "$modules" | sed -e 's/^/module /'; echo "$edges" | sed -e 's/^/edge /'; } | perl -e '
  use strict; use warnings;
  my (%deps, @mods);
  my %seen;
  while (<STDIN>) { chomp; my ($k, $a, $b) = split / /;
    next unless defined $a && $a ne "";
    s{/.*}{} for ($a, defined $b ? $b : ());
    if ($k eq "module") { push @mods, $a unless $seen{$a}++; $deps{$a} //= []; }
    elsif (defined $b && $a ne $b) { push @{$deps{$a}}, $b; } }
  my %layer; my $changed = 1;
  while ($changed) { $changed = 0;
    for my $m (@mods) { next if exists $layer{$m};
      my @d = grep { exists $deps{$_} } @{$deps{$m}};
      next if grep { !exists $layer{$_} } @d;
      my $l = 0; for (@d) { $l = $layer{$_} + 1 if $layer{$_} + 1 > $l; }
      $layer{$m} = $l; $changed = 1; } }
  my @left = grep { !exists $layer{$_} } @mods;
  if (@left) { print STDERR "cycle among: @left\n"; exit 1; }
  print "# rooms by layer (each room uses only rooms of lower layers)\n";
  my $max = 0; for (values %layer) { $max = $_ if $_ > $max; }
  for my $l (0 .. $max) { print "$l: ", join(" ", sort grep { $layer{$_} == $l } @mods), "\n"; }
'
