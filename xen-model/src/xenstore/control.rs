//! CONTROL: implementation-specific administration commands (dom0 only).

use super::error::{XsError, XsResult};
use super::ops::{atoi, strings};
use super::quota::QUOTA_NAMES;
use super::store::{parse_domid, Store};

const COMMANDS: [(&str, &str); 4] =
    [("check", ""), ("print", "<string>"), ("quota", "[set <name> <val>|<domid>]"), ("help", "")];

fn reply(s: String) -> Vec<u8> {
    let mut v = s.into_bytes();
    v.push(0);
    v
}

pub fn control(store: &mut Store, payload: &[u8]) -> XsResult<Vec<u8>> {
    let args = strings(payload);
    let (&cmd, params) = args.split_first().ok_or(XsError::Inval)?;
    match cmd {
        b"help" if params.is_empty() => Ok(reply(COMMANDS.iter().map(|(c, p)| format!("{c:<15} {p}\n")).collect())),
        b"check" if params.is_empty() => match store.tree().check() {
            Ok(()) => Ok(b"OK\0".to_vec()),
            Err(problem) => {
                tracing::error!(%problem, "xenstore consistency check failed");
                Err(XsError::Io)
            }
        },
        b"print" if params.len() == 1 => {
            tracing::info!(message = %String::from_utf8_lossy(params[0]), "xenstore control print");
            Ok(b"OK\0".to_vec())
        }
        b"quota" => quota(store, params),
        _ => Err(XsError::Inval),
    }
}

fn quota(store: &mut Store, params: &[&[u8]]) -> XsResult<Vec<u8>> {
    match params {
        [] => {
            let q = *store.quotas();
            let mut s = String::from("Quota settings:\n");
            for (name, descr) in QUOTA_NAMES {
                let v = q.get(name).unwrap_or(0);
                s.push_str(&format!("{name:<17}: {v:>8} {descr}\n"));
            }
            Ok(reply(s))
        }
        [set, name, val] if *set == b"set" => {
            let v = u32::try_from(atoi(val)).ok().filter(|&v| v >= 1).ok_or(XsError::Inval)?;
            let name = std::str::from_utf8(name).map_err(|_| XsError::Inval)?;
            if store.global_quotas_mut().set(name, v) {
                Ok(b"OK\0".to_vec())
            } else {
                Err(XsError::Inval)
            }
        }
        [domid] => {
            let d = parse_domid(domid)?;
            let usage = store.usage(d).ok_or(XsError::NoEnt)?;
            let mut s = format!("Domain {d}:\n");
            for (name, v) in usage {
                s.push_str(&format!("{name:<17}: {v:>8}\n"));
            }
            Ok(reply(s))
        }
        _ => Err(XsError::Inval),
    }
}
