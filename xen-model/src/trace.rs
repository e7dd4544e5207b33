//! Readable hypercall traces (`--trace-hypercalls`, tracing target
//! "xensim::hypercall"): one line per call with the hypercall's name, its
//! sub-op by name, the remaining arguments and the result, errors by name.

use crate::hypercall::{name, nr};

/// The name of sub-op `sub` of hypercall `n` (names as in Xen's public
/// headers, without their prefix), if it has one.
pub fn sub_op_name(n: u32, sub: u32) -> Option<&'static str> {
    let names: &[&str] = match n {
        nr::XEN_VERSION => &[
            "version",
            "extraversion",
            "compile_info",
            "capabilities",
            "changeset",
            "platform_parameters",
            "get_features",
            "pagesize",
            "guest_handle",
            "commandline",
            "build_id",
        ],
        nr::MEMORY_OP => {
            return match sub & 0x3f {
                0 => Some("increase_reservation"),
                1 => Some("decrease_reservation"),
                2 => Some("maximum_ram_page"),
                3 => Some("current_reservation"),
                4 => Some("maximum_reservation"),
                6 => Some("populate_physmap"),
                7 => Some("add_to_physmap"),
                9 => Some("memory_map"),
                23 => Some("add_to_physmap_batch"),
                _ => None,
            }
        }
        nr::HVM_OP => {
            return match sub {
                0 => Some("set_param"),
                1 => Some("get_param"),
                9 => Some("pagetable_dying"),
                10 => Some("get_time"),
                23 => Some("set_evtchn_upcall_vector"),
                _ => None,
            }
        }
        nr::VCPU_OP => &[
            "initialise",
            "up",
            "down",
            "is_up",
            "get_runstate_info",
            "register_runstate_memory_area",
            "set_periodic_timer",
            "stop_periodic_timer",
            "set_singleshot_timer",
            "stop_singleshot_timer",
            "register_vcpu_info",
            "send_nmi",
            "get_physid",
            "register_vcpu_time_memory_area",
        ],
        nr::SCHED_OP => &["yield", "block", "shutdown", "poll", "remote_shutdown", "shutdown_code", "watchdog"],
        nr::EVENT_CHANNEL_OP => &[
            "bind_interdomain",
            "bind_virq",
            "bind_pirq",
            "close",
            "send",
            "status",
            "alloc_unbound",
            "bind_ipi",
            "bind_vcpu",
            "unmask",
            "reset",
            "init_control",
            "expand_array",
            "set_priority",
        ],
        nr::GRANT_TABLE_OP => {
            return [
                "map_grant_ref",
                "unmap_grant_ref",
                "setup_table",
                "dump_table",
                "transfer",
                "copy",
                "query_size",
                "unmap_and_replace",
                "set_version",
                "get_status_frames",
                "get_version",
                "swap_grant_ref",
                "cache_flush",
            ]
            .get((sub & 0xfff) as usize)
            .copied()
        }
        nr::PHYSDEV_OP => {
            return match sub {
                5 => Some("irq_status_query"),
                12 => Some("eoi"),
                13 => Some("map_pirq"),
                14 => Some("unmap_pirq"),
                23 => Some("get_free_pirq"),
                _ => None,
            }
        }
        nr::CONSOLE_IO => &["write", "read"],
        nr::VM_ASSIST => &["enable", "disable"],
        _ => &[],
    };
    names.get(sub as usize).copied()
}

/// Xen's errno names (xen/include/public/errno.h) for the values this model returns.
pub fn errno_name(e: i64) -> Option<&'static str> {
    use crate::errno::*;
    Some(match e {
        EPERM => "EPERM",
        ENOENT => "ENOENT",
        ESRCH => "ESRCH",
        EINTR => "EINTR",
        EIO => "EIO",
        ENXIO => "ENXIO",
        E2BIG => "E2BIG",
        EBADF => "EBADF",
        EAGAIN => "EAGAIN",
        ENOMEM => "ENOMEM",
        EACCES => "EACCES",
        EFAULT => "EFAULT",
        EBUSY => "EBUSY",
        EEXIST => "EEXIST",
        EXDEV => "EXDEV",
        ENODEV => "ENODEV",
        EISDIR => "EISDIR",
        EINVAL => "EINVAL",
        ENOSPC => "ENOSPC",
        EROFS => "EROFS",
        EDOM => "EDOM",
        ERANGE => "ERANGE",
        ENOSYS => "ENOSYS",
        ENOTEMPTY => "ENOTEMPTY",
        ENODATA => "ENODATA",
        ETIME => "ETIME",
        84 => "EILSEQ",
        EOVERFLOW => "EOVERFLOW",
        EOPNOTSUPP => "EOPNOTSUPP",
        EISCONN => "EISCONN",
        ENOTCONN => "ENOTCONN",
        ETIMEDOUT => "ETIMEDOUT",
        _ => return None,
    })
}

/// A hypercall's result as the trace shows it: errors by name ("-EINVAL"),
/// other values in decimal.
pub fn result_text(ret: i64) -> String {
    match ret.checked_neg().and_then(errno_name) {
        Some(n) if ret < 0 => format!("-{n}"),
        _ => ret.to_string(),
    }
}

/// The trace line of one call: `name(sub_op, arg, ...) = result`. Calls
/// without sub-ops (set_timer_op) show their first argument as a plain one;
/// unknown sub-ops show their number.
pub fn line(n: u32, args: &[u64; 6], compat: bool, ret: i64) -> String {
    let mut parts = Vec::new();
    let rest = match n {
        nr::SET_TIMER_OP if compat => {
            parts.push(format!("{:#x}", args[0] | args[1] << 32));
            &args[2..2]
        }
        nr::SET_TIMER_OP => {
            parts.push(format!("{:#x}", args[0]));
            &args[1..1]
        }
        // (cmd, count, buffer), (cmd, uop, count) and (cmd, vcpu, arg) calls carry three.
        nr::CONSOLE_IO | nr::GRANT_TABLE_OP | nr::VCPU_OP => &args[1..3],
        _ => &args[1..2],
    };
    if n != nr::SET_TIMER_OP {
        let sub = args[0] as u32;
        parts.push(match sub_op_name(n, sub) {
            Some(s) => s.to_string(),
            None => sub.to_string(),
        });
    }
    parts.extend(rest.iter().map(|a| format!("{a:#x}")));
    let width = if compat { " [32-bit]" } else { "" };
    format!("{}({}){width} = {}", name(n), parts.join(", "), result_text(ret))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_name_the_call_the_sub_op_and_the_error() {
        let mut a = [0u64; 6];
        a[0] = 4; // EVTCHNOP_send
        a[1] = 0x16_0020;
        assert_eq!(line(32, &a, false, 0), "event_channel_op(send, 0x160020) = 0");
        a[0] = 0; // HVMOP_set_param
        assert_eq!(line(34, &a, false, -22), "hvm_op(set_param, 0x160020) = -EINVAL");
        a[0] = 5; // GNTTABOP_copy, uop, count
        a[2] = 2;
        assert_eq!(line(20, &a, true, 0), "grant_table_op(copy, 0x160020, 0x2) [32-bit] = 0");
        a[0] = 77;
        assert_eq!(line(24, &a, false, -38), "vcpu_op(77, 0x160020, 0x2) = -ENOSYS");
        assert_eq!(line(15, &[0x10, 0x2, 0, 0, 0, 0], true, 0), "set_timer_op(0x200000010) [32-bit] = 0");
        assert_eq!(line(17, &[7, 0, 0, 0, 0, 0], false, 4096), "xen_version(pagesize, 0x0) = 4096");
        assert_eq!(line(99, &[1, 2, 0, 0, 0, 0], false, -38), "unknown(1, 0x2) = -ENOSYS");
        assert_eq!(result_text(-9999), "-9999", "no name: the number");
        assert_eq!(result_text(i64::MIN), i64::MIN.to_string());
    }
}
