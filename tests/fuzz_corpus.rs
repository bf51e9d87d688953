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

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..256)) {
        cachenode::__fuzz::decode_envelope(&data);
        cachenode::__fuzz::decode_bus(&data);
    }

    #[test]
    fn envelope_header_with_random_payload_never_panics(payload in proptest::collection::vec(any::<u8>(), 0..128)) {
        let mut data = vec![0xCB, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        data.extend(payload);
        cachenode::__fuzz::decode_envelope(&data);
    }
}
