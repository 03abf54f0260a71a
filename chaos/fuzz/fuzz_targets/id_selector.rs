//! Fuzz target: the SPIFFE ID, trust domain and selector parsers (configuration files, the admin
//! API, certificates' URI SANs, JWT `sub` claims). Whatever parses must print and parse back to an
//! equal value, and the serde and codec paths must agree with `FromStr`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wire::{codec, Selector, SpiffeId, TrustDomain};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let json = serde_json::to_string(text).expect("a string serializes");
    let frame = codec::encode(&text.to_owned()).expect("a string encodes");

    let id = text.parse::<SpiffeId>();
    if let Ok(id) = &id {
        let printed = id.to_string();
        assert_eq!(&printed.parse::<SpiffeId>().expect("printed ID parses"), id);
        assert_eq!(id.as_str(), printed);
        let td = id.trust_domain();
        assert!(id.is_member_of(&td));
        assert_eq!(td.as_str(), id.trust_domain_str());
        assert_eq!(
            td.to_string()
                .parse::<TrustDomain>()
                .expect("its trust domain parses"),
            td
        );
        assert_eq!(id.is_trust_domain_id(), id.path().is_empty());
    }
    assert_eq!(
        serde_json::from_str::<SpiffeId>(&json).ok(),
        id.clone().ok()
    );
    assert_eq!(codec::decode::<SpiffeId>(&frame).ok(), id.ok());

    let td = text.parse::<TrustDomain>();
    if let Ok(td) = &td {
        assert_eq!(
            &td.to_string()
                .parse::<TrustDomain>()
                .expect("printed TD parses"),
            td
        );
        let tid = td.id();
        assert!(tid.is_trust_domain_id());
        assert_eq!(&tid.trust_domain(), td);
        assert_eq!(
            tid.to_string().parse::<SpiffeId>().expect("TD's ID parses"),
            tid
        );
    }
    assert_eq!(
        serde_json::from_str::<TrustDomain>(&json).ok(),
        td.clone().ok()
    );
    assert_eq!(codec::decode::<TrustDomain>(&frame).ok(), td.ok());

    let sel = text.parse::<Selector>();
    if let Ok(sel) = &sel {
        assert_eq!(
            &sel.to_string()
                .parse::<Selector>()
                .expect("printed selector parses"),
            sel
        );
        assert_eq!(
            &Selector::new(sel.kind(), sel.value()).expect("parts build"),
            sel
        );
    }
    assert_eq!(
        serde_json::from_str::<Selector>(&json).ok(),
        sel.clone().ok()
    );
    assert_eq!(codec::decode::<Selector>(&frame).ok(), sel.ok());
});
