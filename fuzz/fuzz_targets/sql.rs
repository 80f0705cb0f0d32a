//! libFuzzer entry for [`fencegate_fuzz::sql`].
#![no_main]
#![forbid(unsafe_code)]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fencegate_fuzz::sql(data));
