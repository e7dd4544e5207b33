//! Property: one transaction interleaved with outside writes behaves like a
//! sequential reference. Inside, the transaction reads its own writes, else
//! the committed node as it is now (C xenstored keeps no snapshot: it
//! records the generation of each node a transaction accesses and fails the
//! commit if one changed since); outside, nothing of it is visible until
//! commit. Without outside changes the commit succeeds and equals running its
//! writes at commit time; with them it may instead fail with EAGAIN and
//! change nothing; a successful commit equals the serial order (outside
//! writes, then the transaction) and what the transaction read is still true
//! at commit.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::{MsgType, Store, XsError};

const KEYS: [&str; 4] = ["/p/a", "/p/b", "/p/c", "/p/d"];

#[derive(Clone, Debug)]
enum Op {
    Write { tx: bool, key: usize, value: u8 },
    Rm { tx: bool, key: usize },
    Read { tx: bool, key: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (any::<bool>(), 0..KEYS.len(), 0u8..4).prop_map(|(tx, key, value)| Op::Write { tx, key, value }),
        (any::<bool>(), 0..KEYS.len()).prop_map(|(tx, key)| Op::Rm { tx, key }),
        (any::<bool>(), 0..KEYS.len()).prop_map(|(tx, key)| Op::Read { tx, key }),
    ]
}

fn z(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

type Kv = BTreeMap<&'static str, Vec<u8>>;

fn read(store: &mut Store, c: super::ConnId, tx: u32, key: &str) -> Option<Vec<u8>> {
    match store.call(c, MsgType::Read, tx, &z(key)) {
        Ok(v) => Some(v),
        Err(XsError::NoEnt) => None,
        Err(e) => panic!("read {key}: {e:?}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
    #[test]
    fn a_transaction_matches_the_sequential_reference(
        initial in proptest::collection::vec(proptest::option::of(0u8..4), KEYS.len()),
        ops in proptest::collection::vec(op(), 0..24),
        commit in any::<bool>(),
    ) {
        let mut store = Store::new();
        let c = store.connect(0);
        store.call(c, MsgType::Mkdir, 0, &z("/p")).unwrap();
        let mut committed: Kv = BTreeMap::new();
        for (k, v) in KEYS.iter().zip(&initial) {
            if let Some(v) = v {
                let mut p = z(k);
                p.push(b'0' + v);
                store.call(c, MsgType::Write, 0, &p).unwrap();
                committed.insert(k, vec![b'0' + v]);
            }
        }
        let started = store.call(c, MsgType::TransactionStart, 0, &z("")).unwrap();
        let tx: u32 = std::str::from_utf8(&started[..started.len() - 1]).unwrap().parse().unwrap();
        // The transaction's own changes over the committed nodes.
        let mut mine: BTreeMap<&'static str, Option<Vec<u8>>> = BTreeMap::new();
        let mut seen: Vec<(&'static str, Option<Vec<u8>>)> = Vec::new();
        let mut interfered = false;
        for op in &ops {
            match *op {
                Op::Write { tx: in_tx, key, value } => {
                    let k = KEYS[key];
                    let mut p = z(k);
                    p.push(b'0' + value);
                    store.call(c, MsgType::Write, if in_tx { tx } else { 0 }, &p).unwrap();
                    if in_tx {
                        mine.insert(k, Some(vec![b'0' + value]));
                    } else {
                        committed.insert(k, vec![b'0' + value]);
                        interfered = true;
                    }
                }
                Op::Rm { tx: in_tx, key } => {
                    let k = KEYS[key];
                    let r = store.call(c, MsgType::Rm, if in_tx { tx } else { 0 }, &z(k));
                    let exists = if in_tx {
                        mine.get(k).cloned().unwrap_or_else(|| committed.get(k).cloned()).is_some()
                    } else {
                        committed.contains_key(k)
                    };
                    // As C xenstored: removing a missing node whose parent exists succeeds.
                    prop_assert!(r.is_ok(), "rm {} (tx {}): {:?}", k, in_tx, r);
                    if exists {
                        if in_tx {
                            mine.insert(k, None);
                        } else {
                            committed.remove(k);
                            interfered = true;
                        }
                    }
                }
                Op::Read { tx: in_tx, key } => {
                    let k = KEYS[key];
                    let got = read(&mut store, c, if in_tx { tx } else { 0 }, k);
                    let want = if in_tx {
                        mine.get(k).cloned().unwrap_or_else(|| committed.get(k).cloned())
                    } else {
                        committed.get(k).cloned()
                    };
                    prop_assert_eq!(&got, &want, "read {} (tx {})", k, in_tx);
                    if in_tx && !mine.contains_key(k) {
                        seen.push((k, got));
                    }
                }
            }
        }
        let end = store.call(c, MsgType::TransactionEnd, tx, &z(if commit { "T" } else { "F" }));
        let mut serial = committed.clone();
        for (k, v) in &mine {
            match v {
                Some(v) => serial.insert(k, v.clone()),
                None => serial.remove(k),
            };
        }
        let expect = match &end {
            Ok(_) if commit => {
                for (k, v) in &seen {
                    prop_assert_eq!(&committed.get(k).cloned(), v, "the transaction read {} before commit", k);
                }
                serial
            }
            Ok(_) => committed,
            Err(XsError::Again) if commit && interfered => committed,
            Err(e) => return Err(TestCaseError::fail(format!("transaction end: {e:?} (interfered: {interfered})"))),
        };
        for k in KEYS {
            prop_assert_eq!(read(&mut store, c, 0, k), expect.get(k).cloned(), "{} after the transaction", k);
        }
        store.tree().check().map_err(TestCaseError::fail)?;
    }
}
