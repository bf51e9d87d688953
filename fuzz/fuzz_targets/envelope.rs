//! Bytes read from Redis, as values of a few shapes: never a panic, never an
//! unbounded allocation.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cachenode::__fuzz::decode_envelope(data);
});
