//! Bytes read from the bus channel or log: never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cachenode::__fuzz::decode_bus(data);
});
