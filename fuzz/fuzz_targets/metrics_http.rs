//! libFuzzer entry for [`fencegate_fuzz::metrics_http`].
#![no_main]
#![forbid(unsafe_code)]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fencegate_fuzz::metrics_http(data));
