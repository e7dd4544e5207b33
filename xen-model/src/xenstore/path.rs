//! Path rules (docs/misc/xenstore.txt): characters [A-Za-z0-9-/_@], no "//", no trailing
//! "/" except the root, relative paths live under /local/domain/<domid>, special watch
//! paths start with '@'.

use super::error::{XsError, XsResult};
use super::wire::ABS_PATH_MAX;

/// A path after canonicalisation, plus whether the caller wrote it relative.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Canonical {
    pub path: String,
    pub relative: bool,
}

/// /local/domain/<domid>: a domain's home, the base of its relative paths.
pub fn domain_path(domid: u16) -> String {
    format!("/local/domain/{domid}")
}

fn valid_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'/' | b'_' | b'@')
}

/// Length of a "/local/domain/<n>/" prefix (n of 1..=5 digits), as C xenstored exempts
/// it from the per-domain path-length quota; 0 if `name` has no such prefix.
fn local_prefix_len(name: &str) -> usize {
    const P: &str = "/local/domain/";
    let Some(rest) = name.strip_prefix(P) else { return 0 };
    let digits = rest.bytes().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 5 || rest.as_bytes().get(digits) != Some(&b'/') {
        return 0;
    }
    P.len() + digits + 1
}

/// Canonicalises a path sent by domain `domid`. `rel_max` is the path-max quota applied to
/// the part below /local/domain/<n>/ (None: unlimited, for dom0). `allow_special`
/// admits '@' paths (watches, permissions of special nodes).
pub fn canonicalize(raw: &[u8], domid: u16, rel_max: Option<usize>, allow_special: bool) -> XsResult<Canonical> {
    if !raw.iter().all(|&b| valid_char(b)) {
        return Err(XsError::Inval);
    }
    // All bytes are ASCII now.
    let s = std::str::from_utf8(raw).map_err(|_| XsError::Inval)?;
    if s.starts_with('@') && !allow_special {
        return Err(XsError::Inval);
    }
    let relative = !s.starts_with('/') && !s.starts_with('@');
    let path = if relative { format!("{}/{s}", domain_path(domid)) } else { s.to_owned() };
    if (path.ends_with('/') && path != "/") || path.contains("//") || path.len() > ABS_PATH_MAX {
        return Err(XsError::Inval);
    }
    if let Some(max) = rel_max {
        if path.len() - local_prefix_len(&path) > max {
            return Err(XsError::Inval);
        }
    }
    Ok(Canonical { path, relative })
}

/// Parent of a canonical path ("/" for top-level nodes and for '@' names).
pub fn parent(path: &str) -> &str {
    match path.get(1..).and_then(|rest| rest.rfind('/')) {
        Some(i) => &path[..i + 1],
        None => "/",
    }
}

/// Last component of a canonical path other than "/".
pub fn basename(path: &str) -> &str {
    match path.rfind('/') {
        Some(i) => &path[i + 1..],
        None => path,
    }
}

/// Joins a parent and a child name.
pub fn child_path(parent: &str, name: &str) -> String {
    if parent == "/" {
        format!("/{name}")
    } else {
        format!("{parent}/{name}")
    }
}

/// Whether `child` is `parent` or below it, at most `depth` levels down when given
/// (depth 0: the node itself only; 1: direct children too; ...).
pub fn is_child(child: &str, parent: &str, depth: Option<u32>) -> bool {
    let Some(rest) = child.strip_prefix(parent) else { return false };
    if rest.is_empty() {
        return true;
    }
    let below = if parent == "/" {
        rest
    } else {
        match rest.strip_prefix('/') {
            Some(r) => r,
            None => return false,
        }
    };
    match depth {
        None => true,
        // `below` has one component more than it has slashes.
        Some(d) => (below.bytes().filter(|&b| b == b'/').count() as u64) < u64::from(d),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(s: &str, domid: u16) -> XsResult<String> {
        canonicalize(s.as_bytes(), domid, Some(2048), false).map(|c| c.path)
    }

    #[test]
    fn relative_paths_are_under_the_domain_home() {
        assert_eq!(canon("device/vbd", 1).unwrap(), "/local/domain/1/device/vbd");
        assert!(canonicalize(b"x", 3, None, false).unwrap().relative);
        assert!(!canonicalize(b"/x", 3, None, false).unwrap().relative);
    }

    #[test]
    fn malformed_paths_are_einval() {
        for bad in ["", "/a/", "/a//b", "//", "/a b", "/a.b", "/ä", "@releaseDomain", "a/"] {
            assert_eq!(canon(bad, 1), Err(XsError::Inval), "{bad:?}");
        }
        assert_eq!(canon("/", 1).unwrap(), "/");
        assert_eq!(canonicalize(b"@releaseDomain", 1, None, true).unwrap().path, "@releaseDomain");
        assert_eq!(canon("/A-z_0@9", 1).unwrap(), "/A-z_0@9");
    }

    #[test]
    fn length_limits() {
        // Absolute limit 3072 for everyone.
        let ok = format!("/{}", "a".repeat(3071));
        assert!(canonicalize(ok.as_bytes(), 0, None, false).is_ok());
        let long = format!("/{}", "a".repeat(3072));
        assert_eq!(canonicalize(long.as_bytes(), 0, None, false), Err(XsError::Inval));
        // The relative quota counts only what is below /local/domain/<n>/.
        let rel = "a".repeat(2048);
        assert!(canon(&rel, 1).is_ok());
        assert_eq!(canon(&"a".repeat(2049), 1), Err(XsError::Inval));
        let abs = format!("/vm/{}", "a".repeat(2044));
        assert_eq!(abs.len(), 2048);
        assert!(canon(&abs, 1).is_ok());
        assert_eq!(canon(&format!("{abs}b"), 1), Err(XsError::Inval));
    }

    #[test]
    fn parent_and_basename() {
        assert_eq!(parent("/a/b/c"), "/a/b");
        assert_eq!(parent("/a"), "/");
        assert_eq!(parent("@releaseDomain"), "/");
        assert_eq!(basename("/a/b/c"), "c");
        assert_eq!(child_path("/", "a"), "/a");
        assert_eq!(child_path("/a", "b"), "/a/b");
    }

    #[test]
    fn is_child_follows_the_depth_rule() {
        assert!(is_child("/a", "/a", Some(0)));
        assert!(!is_child("/a/b", "/a", Some(0)));
        assert!(is_child("/a/b", "/a", Some(1)));
        assert!(!is_child("/a/b/c", "/a", Some(1)));
        assert!(is_child("/a/b/c", "/a", Some(2)));
        assert!(is_child("/a/b/c", "/a", None));
        assert!(!is_child("/ab", "/a", None));
        assert!(is_child("/x", "/", Some(1)));
        assert!(!is_child("/x/y", "/", Some(1)));
        assert!(is_child("@releaseDomain/3", "@releaseDomain", Some(1)));
    }
}
