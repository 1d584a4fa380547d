//! A UPnP gateway's answers from arbitrary bytes: SSDP answers and device
//! descriptions (the parts DCol reads itself; SOAP answers are igd-next's)
//! parse or fail, never panic; a control URL found is always a plain
//! http:// URL.
#![no_main]

use dcol::http::Url;
use dcol::traversal::upnp;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = upnp::parse_ssdp(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let base = Url::parse("http://192.168.1.1:5000/rootDesc.xml").expect("valid");
        if let Ok(s) = upnp::parse_description(text, &base) {
            assert!(s.control.to_string().starts_with("http://"));
        }
    }
});
