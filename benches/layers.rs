//! Each layer of a node beside the raw operation it wraps, in one run.
//!
//! * RAM hit: `CacheNode::get_arc` on a RAM-resident key vs a bare moka
//!   `get` of the same `Arc`'d struct; `get_arc` followed by a clone of the
//!   value vs a cached function's RAM hit (`CachedFn::call`, which returns
//!   a clone), for one `u64` argument and for `(u64, String, bool)`.
//! * Redis hit: `get_arc` through a Redis-only handle (RAM never consulted)
//!   vs a bare `GET` on a connection of the same kind plus the bincode
//!   decode of the payload.
//! * Set: `CacheNode::set` (Redis `SET` + RAM insert) vs a bare `SET`.
//! * Codec: encoding and decoding a payload with the codec crate's typed
//!   serde functions vs through the object-safe [`Codec`](cachenode::Codec)
//!   trait (what a node runs for a user's codec), for the small struct and
//!   a list of 100 of them; and the node's own decode of the value's
//!   envelope (`node` rows: the header checks, then the built-in codec's
//!   typed path as a node runs it).
//!
//! Starts its own redis-server on a free loopback port.
//! Run: `cargo bench --bench layers`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use cachenode::{Bincode, CacheNode, Codec, Layers, MsgPack, Ttl};
use criterion::{criterion_group, criterion_main, Criterion};
use futures::FutureExt;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Small {
    id: u64,
    name: String,
    score: f64,
}

fn small() -> Small {
    Small {
        id: 42,
        name: "ada lovelace".into(),
        score: 0.5,
    }
}

/// Typed serde calls against the same codec through `dyn Codec`.
fn codec_benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec");
    let list: Vec<Small> = (0..100).map(|_| small()).collect();
    let bincode_dyn: &dyn Codec = &Bincode;
    let msgpack_dyn: &dyn Codec = &MsgPack;
    let config = bincode::config::standard();
    for (shape, one) in [("small", false), ("list100", true)] {
        let encode_typed = |out: &mut Vec<u8>| {
            if one {
                bincode::serde::encode_into_std_write(&list, out, config).unwrap();
            } else {
                bincode::serde::encode_into_std_write(small(), out, config).unwrap();
            }
        };
        let mut bin = Vec::new();
        encode_typed(&mut bin);
        let mut mp = Vec::new();
        if one {
            rmp_serde::encode::write_named(&mut mp, &list).unwrap();
        } else {
            rmp_serde::encode::write_named(&mut mp, &small()).unwrap();
        }
        let (bin_envelope, mp_envelope) = if one {
            (
                cachenode::__fuzz::seal_with(Bincode, &list).unwrap(),
                cachenode::__fuzz::seal_with(MsgPack, &list).unwrap(),
            )
        } else {
            (
                cachenode::__fuzz::seal_with(Bincode, &small()).unwrap(),
                cachenode::__fuzz::seal_with(MsgPack, &small()).unwrap(),
            )
        };
        g.bench_function(format!("bincode_typed_encode_{shape}"), |b| {
            let mut out = Vec::with_capacity(8192);
            b.iter(|| {
                out.clear();
                encode_typed(&mut out);
                out.len()
            })
        });
        g.bench_function(format!("bincode_dyn_encode_{shape}"), |b| {
            let mut out = Vec::with_capacity(8192);
            b.iter(|| {
                out.clear();
                if one {
                    bincode_dyn.encode_value(&list, &mut out).unwrap();
                } else {
                    bincode_dyn.encode_value(&small(), &mut out).unwrap();
                }
                out.len()
            })
        });
        g.bench_function(format!("msgpack_typed_encode_{shape}"), |b| {
            let mut out = Vec::with_capacity(8192);
            b.iter(|| {
                out.clear();
                if one {
                    rmp_serde::encode::write_named(&mut out, &list).unwrap();
                } else {
                    rmp_serde::encode::write_named(&mut out, &small()).unwrap();
                }
                out.len()
            })
        });
        g.bench_function(format!("msgpack_dyn_encode_{shape}"), |b| {
            let mut out = Vec::with_capacity(8192);
            b.iter(|| {
                out.clear();
                if one {
                    msgpack_dyn.encode_value(&list, &mut out).unwrap();
                } else {
                    msgpack_dyn.encode_value(&small(), &mut out).unwrap();
                }
                out.len()
            })
        });
        macro_rules! decodes {
            ($t:ty) => {
                g.bench_function(format!("bincode_typed_decode_{shape}"), |b| {
                    b.iter(|| {
                        let (v, _): ($t, usize) =
                            bincode::serde::decode_from_slice(&bin, config).unwrap();
                        v
                    })
                });
                g.bench_function(format!("bincode_dyn_decode_{shape}"), |b| {
                    b.iter(|| bincode_dyn.decode_value::<$t>(&bin, 1 << 20).unwrap())
                });
                // The node's path resolves its codec once; `unseal_with`
                // resolves it per call (an `Arc` allocation), the same
                // before and after any change to the decode itself.
                g.bench_function(format!("bincode_node_decode_{shape}"), |b| {
                    b.iter(|| cachenode::__fuzz::unseal_with::<$t>(Bincode, &bin_envelope).unwrap())
                });
                g.bench_function(format!("msgpack_typed_decode_{shape}"), |b| {
                    b.iter(|| rmp_serde::from_slice::<$t>(&mp).unwrap())
                });
                g.bench_function(format!("msgpack_dyn_decode_{shape}"), |b| {
                    b.iter(|| msgpack_dyn.decode_value::<$t>(&mp, 1 << 20).unwrap())
                });
                g.bench_function(format!("msgpack_node_decode_{shape}"), |b| {
                    b.iter(|| cachenode::__fuzz::unseal_with::<$t>(MsgPack, &mp_envelope).unwrap())
                });
            };
        }
        if one {
            decodes!(Vec<Small>);
        } else {
            decodes!(Small);
        }
    }
    g.finish();
}

/// The computation of a cached function whose value is in RAM: never run.
fn not_computed() -> std::future::Ready<Result<Small, Infallible>> {
    panic!("a RAM hit computed")
}

fn benches(c: &mut Criterion) {
    let server = redis_test::server::RedisServer::new();
    let url = match server.client_addr() {
        redis::ConnectionAddr::Tcp(h, p) => format!("redis://{h}:{p}"),
        other => panic!("unexpected address {other:?}"),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let node = rt.block_on(async {
        // redis-test returns before the server listens.
        for _ in 0..100 {
            if let Ok(n) = CacheNode::builder()
                .redis_url(&url)
                .namespace("bench")
                .build()
                .await
            {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("bench redis did not start");
    });
    rt.block_on(node.set("small", &small(), Ttl::Never))
        .unwrap();
    // RAM is served once the bus listener's first deletion check has
    // renewed the lease.
    rt.block_on(async {
        let ram = node.with_layers(Layers::Ram);
        while ram.get_arc::<Small>("small").await.unwrap().is_none() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });

    let mut g = c.benchmark_group("ram_hit");
    let bare: moka::sync::Cache<String, Arc<Small>> = moka::sync::Cache::new(10_000);
    bare.insert("small".into(), Arc::new(small()));
    g.bench_function("bare_moka_get", |b| {
        b.iter(|| bare.get("small").expect("present"))
    });
    g.bench_function("cachenode_get_arc", |b| {
        b.iter(|| {
            node.get_arc::<Small>("small")
                .now_or_never()
                .expect("a RAM hit completes at once")
                .unwrap()
                .expect("present")
        })
    });
    g.bench_function("cachenode_get_arc_clone", |b| {
        b.iter(|| {
            let v = node
                .get_arc::<Small>("small")
                .now_or_never()
                .expect("a RAM hit completes at once")
                .unwrap()
                .expect("present");
            Small::clone(&v)
        })
    });
    let one = node.func::<(u64,), Small>("bench.one_u64").build().unwrap();
    let three = node
        .func::<(u64, String, bool), Small>("bench.three_args")
        .build()
        .unwrap();
    let three_args = (42u64, String::from("fr-FR"), true);
    rt.block_on(async {
        one.call(&(42,), || async { Ok::<_, Infallible>(small()) })
            .await
            .unwrap();
        three
            .call(&three_args, || async { Ok::<_, Infallible>(small()) })
            .await
            .unwrap();
    });
    g.bench_function("cached_fn_call_u64", |b| {
        b.iter(|| {
            one.call(&(42,), not_computed)
                .now_or_never()
                .expect("a RAM hit completes at once")
                .unwrap()
        })
    });
    g.bench_function("cached_fn_call_u64_string_bool", |b| {
        b.iter(|| {
            three
                .call(&three_args, not_computed)
                .now_or_never()
                .expect("a RAM hit completes at once")
                .unwrap()
        })
    });
    g.finish();

    let mut g = c.benchmark_group("redis_hit");
    let mut conn = rt.block_on(async {
        redis::Client::open(url.as_str())
            .unwrap()
            .get_connection_manager()
            .await
            .unwrap()
    });
    g.bench_function("bare_get_and_decode", |b| {
        b.to_async(&rt).iter(|| {
            let mut conn = conn.clone();
            async move {
                let bytes: Vec<u8> = conn.get("bench:k:small").await.unwrap();
                // The payload follows cachenode's 20-byte envelope header.
                let (v, _): (Small, usize) =
                    bincode::serde::decode_from_slice(&bytes[20..], bincode::config::standard())
                        .unwrap();
                v
            }
        })
    });
    let redis_only = node.with_layers(Layers::Redis);
    g.bench_function("cachenode_get_arc_redis_only", |b| {
        b.to_async(&rt).iter(|| {
            let node = redis_only.clone();
            async move { node.get_arc::<Small>("small").await.unwrap().unwrap() }
        })
    });
    g.finish();

    let mut g = c.benchmark_group("set");
    let payload = bincode::serde::encode_to_vec(small(), bincode::config::standard()).unwrap();
    g.bench_function("bare_set", |b| {
        b.to_async(&rt).iter(|| {
            let mut conn = conn.clone();
            let payload = payload.clone();
            async move {
                let _: () = conn.set("bench:raw", payload).await.unwrap();
            }
        })
    });
    g.bench_function("cachenode_set", |b| {
        b.to_async(&rt).iter(|| {
            let node = node.clone();
            async move { node.set("small2", &small(), Ttl::Never).await.unwrap() }
        })
    });
    g.finish();
    let _: () = rt.block_on(async { conn.del("bench:raw").await.unwrap() });
    drop(server);
}

criterion_group! {
    name = layers;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = benches, codec_benches
}
criterion_main!(layers);
