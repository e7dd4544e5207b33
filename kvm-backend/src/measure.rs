//! Exit round-trip measurements for `xensim bench --backend kvm`.
