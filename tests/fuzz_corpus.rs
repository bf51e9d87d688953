//! The fuzz targets' decoders over the checked-in corpus and random bytes,
//! in the normal test run (the coverage-guided runs are `scripts/fuzz.sh`).

use proptest::prelude::*;

#[test]
fn corpus_decodes_without_panicking() {
    let mut seen = 0;
    for target in ["envelope", "bus_message"] {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus")
            .join(target);
        for entry in std::fs::read_dir(&dir).expect("corpus directory") {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            cachenode::__fuzz::decode_envelope(&bytes);
            cachenode::__fuzz::decode_bus(&bytes);
            seen += 1;
        }
    }
    assert!(seen >= 8, "corpus has {seen} files");
}

#[test]
fn corpus_seeds_are_valid_messages() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/bus_message");
    let keys = std::fs::read(dir.join("keys")).unwrap();
    let msg = cachenode::decode_channel_payload(&keys).expect("seed decodes");
    assert_eq!(msg.seq, 1);
}

/// The MessagePack seeds reach the payload decoder: valid envelopes of the
/// target's types decode to their values, the damaged ones are refused by
/// it (`payload`), not by a header check.
#[cfg(feature = "msgpack")]
#[test]
fn msgpack_seeds_reach_the_msgpack_decoder() {
    use cachenode::__fuzz::{unseal_with, Shape};
    use cachenode::{Bincode, MsgPack};

    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/envelope");
    let seed = |name: &str| std::fs::read(dir.join(name)).expect("seed");
    assert_eq!(
        unseal_with::<Shape>(MsgPack, &seed("msgpack_shape")),
        Ok(Shape {
            id: 7,
            name: "ada".into(),
            tags: vec!["a".into(), "b".into()],
            score: Some(0.5),
        })
    );
    assert_eq!(
        unseal_with::<Shape>(MsgPack, &seed("msgpack_shape_none")),
        Ok(Shape {
            id: u64::MAX,
            name: String::new(),
            tags: vec![],
            score: None,
        })
    );
    assert_eq!(
        unseal_with::<String>(MsgPack, &seed("msgpack_string")).as_deref(),
        Ok("ünïcödé ☃")
    );
    assert_eq!(
        unseal_with::<Vec<u64>>(MsgPack, &seed("msgpack_vec_u64")),
        Ok(vec![0, 1, 300, 70000, u64::MAX])
    );
    assert_eq!(
        unseal_with::<Shape>(MsgPack, &seed("msgpack_shape_cut")),
        Err("payload")
    );
    assert_eq!(
        unseal_with::<Vec<u64>>(MsgPack, &seed("msgpack_vec_u64_lying_length")),
        Err("payload")
    );
    // Read by a bincode node: another codec, refused before the payload.
    assert_eq!(
        unseal_with::<Shape>(Bincode, &seed("msgpack_shape")),
        Err("other_codec")
    );
}

/// A recursive value planted 100 000 levels deep is refused by every
/// codec, typed and through the trait, on a 1 MiB stack: the reason is
/// `too_deep`, not a stack overflow.
#[test]
fn deep_nesting_is_refused_without_exhausting_the_stack() {
    use cachenode::__fuzz::{seal_with, unseal_with, Nest};
    use cachenode::{Bincode, Codec, ValueRef, ValueSlot};

    /// Bincode through the trait, as a user's codec runs.
    #[derive(Clone, Copy)]
    struct Erased;
    impl Codec for Erased {
        fn format_id(&self) -> u8 {
            64
        }
        fn encode(&self, value: ValueRef<'_>, out: &mut Vec<u8>) -> Result<(), String> {
            Bincode.encode(value, out)
        }
        fn decode(&self, bytes: &[u8], limit: usize, slot: ValueSlot<'_>) -> Result<(), String> {
            Bincode.decode(bytes, limit, slot)
        }
    }

    /// The envelope of `levels` times what `wrap` adds around `Nest::End`.
    fn deep(codec: impl Codec + Copy, wrap: fn(Nest) -> Nest, levels: usize) -> Vec<u8> {
        let zero = seal_with(codec, &Nest::End).unwrap();
        let one = seal_with(codec, &wrap(Nest::End)).unwrap();
        let (header, end) = zero.split_at(20);
        let level = one[20..].strip_suffix(end).expect("wrapped");
        [header, &level.repeat(levels), end].concat()
    }

    std::thread::Builder::new()
        .stack_size(1 << 20)
        .spawn(|| {
            let wraps: [fn(Nest) -> Nest; 3] = [
                |n| Nest::More(Box::new(n)),
                |n| Nest::Many(vec![n]),
                |n| Nest::Link {
                    next: Some(Box::new(n)),
                },
            ];
            for wrap in wraps {
                let bytes = deep(Bincode, wrap, 100_000);
                assert_eq!(unseal_with::<Nest>(Bincode, &bytes), Err("too_deep"));
                cachenode::__fuzz::decode_envelope(&bytes);
                let bytes = deep(Erased, wrap, 100_000);
                assert_eq!(unseal_with::<Nest>(Erased, &bytes), Err("too_deep"));
                #[cfg(feature = "msgpack")]
                {
                    let bytes = deep(cachenode::MsgPack, wrap, 100_000);
                    let read = unseal_with::<Nest>(cachenode::MsgPack, &bytes);
                    assert_eq!(read, Err("too_deep"));
                    cachenode::__fuzz::decode_envelope(&bytes);
                }
            }
        })
        .unwrap()
        .join()
        .unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..256)) {
        cachenode::__fuzz::decode_envelope(&data);
        cachenode::__fuzz::decode_bus(&data);
    }

    #[test]
    fn envelope_header_with_random_payload_never_panics(payload in proptest::collection::vec(any::<u8>(), 0..128)) {
        // The older header (version 1), and the current one of each codec.
        let mut data = vec![0xCB, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        data.extend(&payload);
        cachenode::__fuzz::decode_envelope(&data);
        for format_id in [1, 2] {
            let mut data = vec![0xCB, 2, format_id];
            data.extend([0; 17]);
            data.extend(&payload);
            cachenode::__fuzz::decode_envelope(&data);
        }
    }
}
