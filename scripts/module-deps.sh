#!/usr/bin/env bash
# Lists the library's module dependencies and checks that they have no cycle.
#
# A module is a file directly under src/ (`src/func.rs`) together with the
# files of its folder (`src/func/*.rs`): a room and its parts. An edge X -> Y
# is any `crate::Y…` path in X's code (comments left out), including names
# used through the crate root's re-exports (`crate::CacheNode` is `node`),
# which lib.rs's `pub use` lines resolve.
#
# Prints the edges, then the modules in a topological order (each uses only
# modules listed before it), and exits 1 naming the cycle when there is one.
# Usage: scripts/module-deps.sh [src-dir]
set -euo pipefail
src="${1:-$(dirname "$0")/../src}"
cd "$src"

edges=$(perl -e '
  use strict; use warnings;
  sub code { my ($f) = @_; open my $h, "<", $f or die "$f: $!"; local $/; my $s = <$h>;
             $s =~ s{//[^\n]*}{}g; return $s; }
  # Root re-exports: name -> module.
  my %root; my $lib = code("lib.rs");
  while ($lib =~ /pub use ([a-z_]+)((?:::[a-z_]+)*)::(\{[^;]*\}|[A-Za-z_0-9]+)\s*;/g) {
    my ($m, $names) = ($1, $3);
    $root{$_} = $m for ($names =~ /([A-Za-z_][A-Za-z_0-9]*)(?:\s+as\s+[A-Za-z_0-9]+)?/g);
  }
  my %edges;
  for my $f (sort split /\n/, `find . -name "*.rs" -not -path "./bin/*"`) {
    $f =~ s{^\./}{}; (my $room = $f) =~ s{[/.].*}{};
    next if $room eq "lib";
    my $s = code($f);
    my @names;
    push @names, $1 while $s =~ /crate::([A-Za-z_][A-Za-z_0-9]*)/g;
    while ($s =~ /crate::\{([^;]*?)\}\s*;/g) { push @names, ($1 =~ /(?:^|[\s,{])([A-Za-z_][A-Za-z_0-9]*)/g); }
    for my $n (@names) {
      my $dep = -f "$n.rs" ? $n : $root{$n};
      next unless defined $dep && $dep ne $room;
      $edges{"$room $dep"} = 1;
    }
  }
  print "$_\n" for sort keys %edges;
')

echo "# edges (module -> module it uses)"
echo "$edges" | sed -e 's/ / -> /'
echo
rooms=$(ls ./*.rs | sed -e 's:^\./::' -e 's/\.rs$//' | grep -vx lib)
err=$(mktemp)
order=$( { echo "$edges"; for r in $rooms; do echo "$r $r"; done; } | tsort 2>"$err") || true
if [ -s "$err" ]; then
  cat "$err" >&2
  rm -f "$err"
  echo "cycle found" >&2
  exit 1
fi
rm -f "$err"
echo "# topological order (leaves first)"
echo "$order" | tac | tr '\n' ' '
echo
