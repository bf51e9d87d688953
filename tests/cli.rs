//! The `cachenode` operator binary, run as a process against a real
//! redis-server, with nodes in this process observing the effects.
//!
//! Every test starts its own server (see `support`); the binary addresses
//! namespace `t` on it. What is in a node's RAM is read with a RAM-only
//! handle whose computation fails (a *probe*, as in `tests/func.rs`), or
//! with `node.with_layers(Layers::Ram)` for plain keys.
#![cfg(feature = "cli")]

mod support;

use std::convert::Infallible;
use std::future::ready;
use std::process::{Output, Stdio};
use std::time::Duration;

use cachenode::{Args, CacheNode};
use cachenode::{ArgsInKey, Layers};
use redis::Commands;
use serde_json::Value;
use support::cli::command;
use support::{bus_seq, caught_up, eventually, free_port, node, node_in, ram_value, TestRedis};

/// How long an invalidation may take to reach a node (one pub/sub hop
/// normally, the bus's 1 s check at worst); the rest is margin.
const PROPAGATION: Duration = Duration::from_secs(5);

/// Bound on one run of the binary.
const RUN_LIMIT: Duration = Duration::from_secs(30);

/// Runs the binary against `redis`, namespace `t`, to the end.
async fn run(redis: &TestRedis, args: &[&str]) -> Output {
    let url = redis.url();
    let mut all = vec!["--redis-url", url.as_str(), "--namespace", "t"];
    all.extend_from_slice(args);
    run_raw(&all).await
}

async fn run_raw(args: &[&str]) -> Output {
    tokio::time::timeout(RUN_LIMIT, command(args).output())
        .await
        .unwrap_or_else(|_| panic!("cachenode {args:?} did not end"))
        .expect("run cachenode")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts the run succeeded and returns its stdout.
#[track_caller]
fn ok(out: &Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {}\nstderr: {}",
        stdout(out),
        stderr(out)
    );
    stdout(out)
}

#[track_caller]
fn json(out: &Output) -> Value {
    let text = ok(out);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text:?}"))
}

fn user_lang(user: u64, lang: &str) -> Args {
    Args::new()
        .arg("user", &user)
        .unwrap()
        .arg("lang", lang)
        .unwrap()
}

fn computed(v: String) -> impl FnOnce() -> std::future::Ready<Result<String, Infallible>> {
    move || ready(Ok(v))
}

// ---------------------------------------------------------------------------
// invalidate --key, delete --key
// ---------------------------------------------------------------------------

#[tokio::test]
async fn invalidate_key_drops_the_ram_copy_on_other_nodes_and_keeps_redis() {
    let redis = TestRedis::start();
    let (writer, reader) = (node(&redis).await, node(&redis).await);
    writer
        .set("user:1", &"ada".to_string(), Duration::from_secs(60))
        .await
        .unwrap();
    writer
        .set("user:2", &"bob".to_string(), Duration::from_secs(60))
        .await
        .unwrap();
    caught_up([&reader], bus_seq(&redis, "t")).await;
    for key in ["user:1", "user:2"] {
        assert!(reader.get::<String>(key).await.unwrap().is_some());
        assert!(
            reader
                .with_layers(Layers::Ram)
                .get::<String>(key)
                .await
                .unwrap()
                .is_some(),
            "the reader holds {key} in RAM"
        );
    }

    let out = run(&redis, &["invalidate", "--key", "user:1"]).await;
    assert!(ok(&out).contains("dropped 1 key(s)"), "{}", stdout(&out));

    let dropped = eventually(PROPAGATION, || async {
        reader
            .with_layers(Layers::Ram)
            .get::<String>("user:1")
            .await
            .unwrap()
            .is_none()
    })
    .await;
    assert!(dropped, "the reader's RAM copy of user:1 was dropped");
    for n in [&reader, &writer] {
        assert!(
            eventually(PROPAGATION, || async {
                n.with_layers(Layers::Ram)
                    .get::<String>("user:1")
                    .await
                    .unwrap()
                    .is_none()
            })
            .await
        );
    }
    // Untouched: the other key's RAM copy, and both Redis values.
    assert_eq!(
        reader
            .with_layers(Layers::Ram)
            .get::<String>("user:2")
            .await
            .unwrap(),
        Some("bob".to_string())
    );
    assert!(redis.exists("t:k:user:1") && redis.exists("t:k:user:2"));
    assert_eq!(
        reader.get::<String>("user:1").await.unwrap(),
        Some("ada".to_string()),
        "read again from Redis"
    );
}

#[tokio::test]
async fn delete_key_removes_the_redis_values_too() {
    let redis = TestRedis::start();
    let (writer, reader) = (node(&redis).await, node(&redis).await);
    for key in ["a", "b"] {
        writer
            .set(key, &key.to_string(), Duration::from_secs(60))
            .await
            .unwrap();
    }
    caught_up([&reader], bus_seq(&redis, "t")).await;
    assert!(reader.get::<String>("a").await.unwrap().is_some());

    let out = run(
        &redis,
        &["--json", "delete", "--key", "a", "--key", "missing"],
    )
    .await;
    let v = json(&out);
    assert_eq!(v["keys"], serde_json::json!(["a", "missing"]));
    assert_eq!(v["deleted"], serde_json::json!(["a"]), "only a existed");
    assert!(!redis.exists("t:k:a"));
    assert!(redis.exists("t:k:b"));
    assert!(
        eventually(PROPAGATION, || async {
            reader
                .with_layers(Layers::Ram)
                .get::<String>("a")
                .await
                .unwrap()
                .is_none()
        })
        .await
    );
    assert_eq!(reader.get::<String>("a").await.unwrap(), None);
}

// ---------------------------------------------------------------------------
// invalidate --func, delete --func
// ---------------------------------------------------------------------------

#[tokio::test]
async fn invalidate_func_drops_the_ram_copies_on_other_nodes_and_keeps_redis() {
    let redis = TestRedis::start();
    let n = node(&redis).await;
    let build = |name: &str, layers| {
        n.func::<(u64,), String>(name)
            .layers(layers)
            .build()
            .unwrap()
    };
    let (f, probe) = (
        build("get_user", Layers::Both),
        build("get_user", Layers::Ram),
    );
    let (other, other_probe) = (
        build("get_order", Layers::Both),
        build("get_order", Layers::Ram),
    );
    for id in 1..=3u64 {
        f.call(&(id,), computed(format!("user-{id}")))
            .await
            .unwrap();
    }
    other.call(&(1,), computed("order-1".into())).await.unwrap();
    for id in 1..=3u64 {
        assert_eq!(ram_value(&probe, &(id,)).await, Some(format!("user-{id}")));
    }

    let out = run(&redis, &["invalidate", "--func", "get_user"]).await;
    let text = ok(&out);
    assert!(
        text.contains(
            "dropped 1 function(s) from the RAM of every instance of t (Redis values kept)"
        ),
        "{text}"
    );
    let dropped = eventually(PROPAGATION, || async {
        let mut none = true;
        for id in 1..=3u64 {
            none &= ram_value(&probe, &(id,)).await.is_none();
        }
        none
    })
    .await;
    assert!(dropped, "the node's RAM copies were dropped");
    assert_eq!(
        ram_value(&other_probe, &(1,)).await,
        Some("order-1".to_string()),
        "other functions kept"
    );
    assert_eq!(redis.keys("t:f:get_user:*").len(), 3, "Redis keeps them");
    assert_eq!(
        f.call(&(2,), computed("recomputed".into())).await.unwrap(),
        "user-2",
        "read again from Redis"
    );

    // --json, several functions at once.
    let v = json(
        &run(
            &redis,
            &[
                "--json",
                "invalidate",
                "--func",
                "get_user",
                "--func",
                "get_order",
            ],
        )
        .await,
    );
    assert_eq!(
        v["funcs"],
        serde_json::json!(["get_user", "get_order"]),
        "{v}"
    );
    let dropped = eventually(PROPAGATION, || async {
        ram_value(&other_probe, &(1,)).await.is_none() && ram_value(&probe, &(2,)).await.is_none()
    })
    .await;
    assert!(dropped, "both functions dropped");
    assert_eq!(redis.keys("t:f:*").len(), 4, "Redis keeps every value");
}

/// A function name with no key set (a typo, the wrong namespace) is said
/// on stderr, for `invalidate` as for `delete`; a known one is not.
#[tokio::test]
async fn invalidate_func_notes_a_name_with_no_key_set() {
    let redis = TestRedis::start();
    let n = node(&redis).await;
    let f = n.func::<(u64,), String>("get_user").build().unwrap();
    f.call(&(1,), computed("user-1".into())).await.unwrap();
    let known = run(&redis, &["invalidate", "--func", "get_user"]).await;
    ok(&known);
    assert!(!stderr(&known).contains("note:"), "{}", stderr(&known));
    let typo = run(&redis, &["invalidate", "--func", "get_usr"]).await;
    ok(&typo);
    assert!(
        stderr(&typo).contains("note: get_usr has no key set in t; check the name"),
        "{}",
        stderr(&typo)
    );
}

#[tokio::test]
async fn delete_func_deletes_every_value_of_the_function() {
    let redis = TestRedis::start();
    let n = node(&redis).await;
    let f = n.func::<(u64,), String>("get_user").build().unwrap();
    let other = n.func::<(u64,), String>("get_order").build().unwrap();
    let probe = n
        .func::<(u64,), String>("get_user")
        .layers(Layers::Ram)
        .build()
        .unwrap();
    for id in 1..=5u64 {
        f.call(&(id,), computed(format!("user-{id}")))
            .await
            .unwrap();
    }
    other.call(&(1,), computed("order-1".into())).await.unwrap();
    assert_eq!(redis.keys("t:f:get_user:*").len(), 5);
    assert_eq!(ram_value(&probe, &(3,)).await, Some("user-3".to_string()));

    let out = run(&redis, &["delete", "--func", "get_user"]).await;
    let text = ok(&out);
    assert!(text.contains("get_user: deleted 5 value(s)"), "{text}");

    assert!(redis.keys("t:f:get_user:*").is_empty());
    assert_eq!(f.key_set_size().await.unwrap(), 0);
    assert_eq!(
        redis.keys("t:f:get_order:*").len(),
        1,
        "other functions kept"
    );
    let dropped = eventually(PROPAGATION, || async {
        let mut none = true;
        for id in 1..=5u64 {
            none &= ram_value(&probe, &(id,)).await.is_none();
        }
        none
    })
    .await;
    assert!(dropped, "the node's RAM copies were dropped");
    assert_eq!(
        f.call(&(3,), computed("fresh".into())).await.unwrap(),
        "fresh",
        "computed again"
    );

    // --json, several functions at once.
    f.call(&(9,), computed("x".into())).await.unwrap();
    let v = json(
        &run(
            &redis,
            &[
                "--json",
                "delete",
                "--func",
                "get_user",
                "--func",
                "get_order",
            ],
        )
        .await,
    );
    assert_eq!(v["deleted"], 3, "{v}");
    assert_eq!(v["functions"][0]["name"], "get_user");
    assert_eq!(v["functions"][0]["deleted"], 2);
    assert_eq!(v["functions"][1]["deleted"], 1);
    assert!(redis.keys("t:f:*").is_empty());
}

#[tokio::test]
async fn delete_func_with_args_deletes_only_the_matching_values() {
    let redis = TestRedis::start();
    let n = node(&redis).await;
    let build = |ram_only: bool| {
        let b = n.func::<Args, String>("profile").key_args(ArgsInKey::Each);
        if ram_only {
            b.layers(Layers::Ram).build().unwrap()
        } else {
            b.build().unwrap()
        }
    };
    let (f, probe) = (build(false), build(true));
    let calls = [(1, "fr"), (1, "en"), (2, "fr"), (2, "en"), (3, "fr")];
    for (user, lang) in calls {
        f.call(&user_lang(user, lang), computed(format!("{user}-{lang}")))
            .await
            .unwrap();
    }
    let key = |user, lang| f.cache_key(&user_lang(user, lang)).unwrap();
    assert!(calls.iter().all(|&(u, l)| redis.exists(&key(u, l))));

    // user 1 in French only.
    let out = run(
        &redis,
        &[
            "delete",
            "--func",
            "profile",
            "--args",
            "user=u64:1",
            "lang=str:fr",
        ],
    )
    .await;
    let text = ok(&out);
    assert!(text.contains("deleted 1 matching value(s)"), "{text}");
    assert!(!redis.exists(&key(1, "fr")));
    for (u, l) in [(1, "en"), (2, "fr"), (2, "en"), (3, "fr")] {
        assert!(redis.exists(&key(u, l)), "{u}-{l} kept");
    }
    assert!(
        eventually(PROPAGATION, || async {
            ram_value(&probe, &user_lang(1, "fr")).await.is_none()
        })
        .await,
        "the deleted value left the node's RAM"
    );
    assert_eq!(
        ram_value(&probe, &user_lang(1, "en")).await,
        Some("1-en".into())
    );

    // Every call of user 2, repeated --args, JSON.
    let v = json(
        &run(
            &redis,
            &[
                "--json",
                "delete",
                "--func",
                "profile",
                "--args",
                "user=u64:2",
            ],
        )
        .await,
    );
    assert_eq!(v["deleted"], 2, "{v}");
    assert_eq!(v["function"], "profile");
    assert!(!redis.exists(&key(2, "fr")) && !redis.exists(&key(2, "en")));
    assert!(redis.exists(&key(1, "en")) && redis.exists(&key(3, "fr")));

    // A value encoded otherwise than the argument's (a signed integer is a
    // zigzag varint, unsigned ones plain varints) matches nothing.
    let v = json(
        &run(
            &redis,
            &[
                "--json",
                "delete",
                "--func",
                "profile",
                "--args",
                "user=i64:3",
            ],
        )
        .await,
    );
    assert_eq!(v["deleted"], 0);
    assert!(redis.exists(&key(3, "fr")));
    assert_eq!(f.key_set_size().await.unwrap(), 2);
}

// ---------------------------------------------------------------------------
// invalidate --all, delete --all
// ---------------------------------------------------------------------------

#[tokio::test]
async fn invalidate_all_drops_every_ram_and_delete_needs_yes() {
    let redis = TestRedis::start();
    let (writer, reader) = (node(&redis).await, node(&redis).await);
    let elsewhere = node_in(&redis, "other").await;
    writer
        .set("a", &"1".to_string(), Duration::from_secs(60))
        .await
        .unwrap();
    elsewhere
        .set("a", &"other".to_string(), Duration::from_secs(60))
        .await
        .unwrap();
    caught_up([&reader], bus_seq(&redis, "t")).await;
    assert!(reader.get::<String>("a").await.unwrap().is_some());
    assert!(reader
        .with_layers(Layers::Ram)
        .get::<String>("a")
        .await
        .unwrap()
        .is_some());

    let text = ok(&run(&redis, &["invalidate", "--all"]).await);
    assert!(text.contains("dropped everything"), "{text}");
    for n in [&reader, &writer] {
        assert!(
            eventually(PROPAGATION, || async {
                n.with_layers(Layers::Ram)
                    .get::<String>("a")
                    .await
                    .unwrap()
                    .is_none()
            })
            .await,
            "RAM dropped"
        );
    }
    assert!(redis.exists("t:k:a"), "Redis values kept");
    assert!(
        elsewhere
            .with_layers(Layers::Ram)
            .get::<String>("a")
            .await
            .unwrap()
            .is_some(),
        "another namespace's instances are not addressed"
    );

    // Deleting every value needs a confirmation.
    let out = run(&redis, &["delete", "--all"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--yes"), "{}", stderr(&out));
    assert!(redis.exists("t:k:a"), "nothing deleted without --yes");

    let v = json(&run(&redis, &["--json", "delete", "--all", "--yes"]).await);
    assert!(v["deleted"].as_u64().unwrap() >= 1, "{v}");
    assert!(!redis.exists("t:k:a"));
    assert!(redis.exists("other:k:a"), "other namespaces untouched");
    assert_eq!(reader.get::<String>("a").await.unwrap(), None);
}

// ---------------------------------------------------------------------------
// keysets, stats
// ---------------------------------------------------------------------------

#[tokio::test]
async fn keysets_lists_functions_and_sizes_as_text_and_json() {
    let redis = TestRedis::start();
    let n = node(&redis).await;
    let empty = ok(&run(&redis, &["keysets"]).await);
    assert!(empty.contains("no function has a key set in t"), "{empty}");

    let users = n.func::<(u64,), String>("get_user").build().unwrap();
    let orders = n.func::<(u64,), String>("get_order").build().unwrap();
    for id in 0..3u64 {
        users.call(&(id,), computed("u".into())).await.unwrap();
    }
    for id in 0..2u64 {
        orders.call(&(id,), computed("o".into())).await.unwrap();
    }

    let text = ok(&run(&redis, &["keysets"]).await);
    let rows: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows,
        vec![
            vec!["FUNCTION", "KEYS"],
            vec!["get_order", "2"],
            vec!["get_user", "3"],
        ],
        "{text}"
    );

    let v = json(&run(&redis, &["--json", "keysets"]).await);
    assert_eq!(
        v,
        serde_json::json!({
            "namespace": "t",
            "functions": [
                { "name": "get_order", "keys": 2 },
                { "name": "get_user", "keys": 3 },
            ]
        })
    );
}

#[tokio::test]
async fn stats_reports_the_bus_keys_and_functions() {
    let redis = TestRedis::start();
    let n = node(&redis).await;
    let f = n.func::<(u64,), String>("get_user").build().unwrap();
    for id in 0..4u64 {
        f.call(&(id,), computed("u".into())).await.unwrap();
    }
    for key in ["a", "b"] {
        n.set(key, &1u8, Duration::from_secs(60)).await.unwrap();
    }
    n.invalidate_function("get_user").await.unwrap();

    let v = json(&run(&redis, &["--json", "stats"]).await);
    let mut conn = redis.conn();
    let seq: u64 = conn.get("t:{bus}:seq").unwrap();
    let log_len: u64 = redis::cmd("XLEN")
        .arg("t:{bus}:log")
        .query(&mut conn)
        .unwrap();
    let epoch: String = conn.get("t:{bus}:epoch").unwrap();
    assert!(seq >= 3, "2 sets and 1 invalidation at least: {seq}");
    assert_eq!(v["namespace"], "t");
    assert_eq!(v["bus_seq"], seq);
    assert_eq!(v["log_len"], log_len);
    assert_eq!(v["log_first_seq"], 1);
    assert_eq!(v["epoch"], epoch.as_str());
    assert_eq!(v["keys"], redis.keys("t:*").len() as u64);
    assert_eq!(v["plain_values"], 2);
    assert_eq!(v["func_values"], 4);
    assert_eq!(v["functions"], 1);

    let text = ok(&run(&redis, &["stats"]).await);
    assert!(text.contains(&format!("bus seq     {seq}")), "{text}");
    assert!(text.contains("functions   1 with key sets"), "{text}");
    assert!(
        text.contains("(plain values 2, function values 4)"),
        "{text}"
    );
}

// ---------------------------------------------------------------------------
// tail
// ---------------------------------------------------------------------------

/// Subscribers of `t:bus` on `redis`.
fn bus_subscribers(redis: &TestRedis) -> u64 {
    let reply: (String, u64) = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg("t:bus")
        .query(&mut redis.conn())
        .unwrap();
    reply.1
}

/// Starts `cachenode … tail` and waits until it is subscribed (one more
/// subscriber than `node`, which must be subscribed first).
async fn start_tail(redis: &TestRedis, node: &CacheNode, args: &[&str]) -> tokio::process::Child {
    let listening = eventually(Duration::from_secs(10), || async {
        node.bus_health().unwrap().connected
    })
    .await;
    assert!(listening, "the node's listener subscribed");
    let before = bus_subscribers(redis);
    let url = redis.url();
    let mut all = vec!["--redis-url", url.as_str(), "--namespace", "t"];
    all.extend_from_slice(args);
    let child = command(&all)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tail");
    let subscribed = eventually(Duration::from_secs(10), || async {
        bus_subscribers(redis) > before
    })
    .await;
    assert!(subscribed, "tail subscribed to the bus");
    child
}

async fn finish(child: tokio::process::Child) -> Output {
    tokio::time::timeout(RUN_LIMIT, child.wait_with_output())
        .await
        .expect("tail ends after --count messages")
        .expect("tail output")
}

#[tokio::test]
async fn tail_prints_bus_messages_as_they_are_published() {
    let redis = TestRedis::start();
    let n = node(&redis).await;
    let child = start_tail(&redis, &n, &["tail", "--count", "3"]).await;
    // Something else on the channel: shown as malformed, not a crash.
    let _: () = redis.conn().publish("t:bus", "not a message").unwrap();
    n.invalidate_many(&["user:1", "user:2"]).await.unwrap();
    n.invalidate_function("get_user").await.unwrap();
    let out = finish(child).await;
    let text = ok(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert_eq!(lines[0], "#? malformed: no_sequence (13 bytes)");
    let seq: u64 = redis.conn().get("t:{bus}:seq").unwrap();
    assert!(
        lines[1].starts_with(&format!("#{} ", seq - 1)),
        "{}",
        lines[1]
    );
    assert!(
        lines[1].ends_with(" keys(2) k:user:1 k:user:2"),
        "{}",
        lines[1]
    );
    assert!(lines[2].starts_with(&format!("#{seq} ")), "{}", lines[2]);
    assert!(lines[2].ends_with(" func get_user"), "{}", lines[2]);
    // `#seq date from origin …`
    let fields: Vec<&str> = lines[1].split(' ').collect();
    assert!(
        fields[1].ends_with('Z') && fields[1].contains('T'),
        "{}",
        lines[1]
    );
    assert_eq!(fields[2], "from");
    assert!(uuid::Uuid::parse_str(fields[3]).is_ok(), "{}", lines[1]);
    assert!(stderr(&out).contains("listening on t:bus"));
}

#[tokio::test]
async fn tail_json_decodes_function_keys_and_origin() {
    let redis = TestRedis::start();
    let n = node(&redis).await;
    let f = n.func::<(u64,), String>("get_user").build().unwrap();
    f.call(&(7,), computed("u".into())).await.unwrap();
    let call_key = f.cache_key(&(7,)).unwrap();
    let call = call_key.strip_prefix("t:f:get_user:").unwrap().to_owned();

    let child = start_tail(&redis, &n, &["--json", "tail", "--count", "2"]).await;
    let before = tokio::time::Instant::now();
    assert!(f.delete(&(7,)).await.unwrap());
    n.invalidate_all().await.unwrap();
    let out = finish(child).await;
    let text = ok(&out);
    let msgs: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(msgs.len(), 2, "{text}");
    assert_eq!(
        msgs[0]["invalidation"],
        serde_json::json!({
            "type": "keys",
            "keys": [{ "kind": "func", "func": "get_user", "call": call }],
        })
    );
    assert_eq!(
        msgs[1]["invalidation"],
        serde_json::json!({ "type": "all" })
    );
    assert_eq!(
        msgs[1]["seq"].as_u64(),
        msgs[0]["seq"].as_u64().map(|s| s + 1)
    );
    // Both from the same node, whose id is a UUID.
    assert_eq!(msgs[0]["origin"], msgs[1]["origin"]);
    assert!(uuid::Uuid::parse_str(msgs[0]["origin"].as_str().unwrap()).is_ok());
    let sent = msgs[0]["sent_at_us"].as_u64().unwrap();
    let received = msgs[0]["received_at_us"].as_u64().unwrap();
    assert!(
        received + 1_000_000 >= sent,
        "clocks agree: {sent} {received}"
    );
    assert!(before.elapsed() < RUN_LIMIT);
    assert!(stderr(&out).is_empty(), "{}", stderr(&out));
}

#[tokio::test]
async fn bus_log_entries_decode_with_the_public_decoder() {
    // The log holds the same bodies as the channel: `{seq}:` + field `m`.
    let redis = TestRedis::start();
    let n = node(&redis).await;
    n.invalidate_many(&["k1"]).await.unwrap();
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg("t:{bus}:log")
        .arg("-")
        .arg("+")
        .query(&mut redis.conn())
        .unwrap();
    let entry = &reply.ids[0];
    let body: Vec<u8> = entry.get("m").unwrap();
    let mut payload = b"1:".to_vec();
    payload.extend(body);
    let m = cachenode::decode_channel_payload(&payload).unwrap();
    assert_eq!(m.seq, 1);
    assert_eq!(
        m.invalidation,
        cachenode::Invalidation::Keys(vec!["k1".into()])
    );
}

// ---------------------------------------------------------------------------
// errors and exit codes
// ---------------------------------------------------------------------------

#[tokio::test]
async fn unreachable_redis_exits_1_naming_the_url_without_its_password() {
    let port = free_port();
    let url = format!("redis://admin:s3cr3t@127.0.0.1:{port}/0");
    let shown = format!("redis://admin:***@127.0.0.1:{port}/0");
    for args in [
        vec!["stats"],
        vec!["invalidate", "--key", "a"],
        vec!["tail", "--count", "1"],
    ] {
        let mut all = vec!["--redis-url", url.as_str(), "--timeout", "1"];
        all.extend(args.iter().copied());
        let out = run_raw(&all).await;
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains(&shown), "{args:?}: {err}");
        assert!(!err.contains("s3cr3t") && !stdout(&out).contains("s3cr3t"));
    }
    // From the environment, and with --json an error document on stdout.
    let out = tokio::time::timeout(
        RUN_LIMIT,
        command(&["--json", "keysets"])
            .env("CACHE_REDIS_URL", &url)
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    let msg = v["error"].as_str().unwrap();
    assert!(msg.contains(&shown) && !msg.contains("s3cr3t"), "{msg}");
}

#[tokio::test]
async fn usage_errors_exit_2_without_touching_redis() {
    let redis = TestRedis::start();
    let n = node(&redis).await;
    n.set("a", &1u8, Duration::from_secs(60)).await.unwrap();
    let seq = |r: &TestRedis| -> u64 { r.conn().get("t:{bus}:seq").unwrap() };
    let before = seq(&redis);
    for args in [
        vec!["--bogus", "stats"],
        vec!["invalidate"],
        vec!["invalidate", "--key", "a", "--func", "f"],
        vec!["invalidate", "--func", "f", "--args", "x=u64:1"],
        vec!["delete"],
        vec!["delete", "--all"],
        vec!["delete", "--key", "a", "--args", "x=u64:1"],
        vec!["delete", "--func", "f", "--args", "x=f64:1"],
        vec!["delete", "--func", "f", "--args", "x=u64:minus"],
        vec!["delete", "--func", "f", "--func", "g", "--args", "x=u64:1"],
        vec!["invalidate", "--all", "--yes"],
        vec!["invalidate", "--func", "bad name"],
        vec!["delete", "--func", "bad name"],
        vec!["tail", "--count", "x"],
        vec!["nonsense"],
    ] {
        let out = run(&redis, &args).await;
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}{}",
            stdout(&out),
            stderr(&out)
        );
        assert!(!stderr(&out).is_empty(), "{args:?} says why");
    }
    let out = run_raw(&[
        "--namespace",
        "bad ns",
        "--redis-url",
        &redis.url(),
        "stats",
    ])
    .await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("namespace"), "{}", stderr(&out));
    assert_eq!(seq(&redis), before, "nothing was published");
    assert!(redis.exists("t:k:a"));
    // --help is not an error.
    assert_eq!(run_raw(&["--help"]).await.status.code(), Some(0));
}
