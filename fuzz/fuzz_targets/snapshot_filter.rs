//! containerd's filter language (`lamina_core::Filter`), as Walk/List requests carry it:
//! parsing never panics; a filter that parses can be matched against snapshots; an
//! empty alternative matches everything (containerd's `ParseAll`).
//!
//! Input: filter strings separated by newlines.

#![no_main]

use std::time::SystemTime;

use lamina_core::{Filter, Info, Kind};
use libfuzzer_sys::fuzz_target;

fn info(name: &str, parent: &str, kind: Kind, labels: &[(&str, &str)]) -> Info {
    Info {
        name: name.into(),
        parent: parent.into(),
        kind,
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        created: SystemTime::UNIX_EPOCH,
        updated: SystemTime::UNIX_EPOCH,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let filters: Vec<&str> = text.split('\n').collect();
    let Ok(filter) = Filter::parse_all(&filters) else {
        return;
    };
    let infos = [
        info("sha256:abc", "", Kind::Committed, &[]),
        info(
            "k8s.io/3/extract",
            "sha256:abc",
            Kind::Active,
            &[
                ("containerd.io/gc.root", "2024-01-01"),
                ("containerd.io/snapshot.ref", "sha256:abc"),
                ("a.b", ""),
            ],
        ),
        info("view", "sha256:abc", Kind::View, &[("x", "y\"z")]),
    ];
    let results: Vec<bool> = infos.iter().map(|i| filter.matches(i)).collect();
    // Matching is a pure function of the filter and the object.
    let again: Vec<bool> = infos.iter().map(|i| filter.matches(i)).collect();
    assert_eq!(results, again);
    // An added empty alternative matches everything.
    let mut with_empty = filters.clone();
    with_empty.push("");
    let all = Filter::parse_all(&with_empty).expect("parsed before, plus an empty filter");
    assert!(infos.iter().all(|i| all.matches(i)));
});
