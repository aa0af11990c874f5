//! The wire ABI checked against Xen itself: Xen's public headers (Debian `libxen-dev`) are
//! compiled with the system C compiler, and the size and every field offset and size of each
//! struct in `xen::abi`, plus the constants usbdom relies on, are compared with what C says.
//!
//! Missing headers fail the test (never skip): `cargo xtask test` installs `libxen-dev`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use xen::abi::grant_table::GntStatus;
use xen::abi::xs_wire::{XsdError, XsdSockmsgType};
use xen::abi::{self, DomId};

const HEADERS: &[&str] = &[
    "xen/xen.h",
    "xen/sched.h",
    "xen/version.h",
    "xen/features.h",
    "xen/event_channel.h",
    "xen/grant_table.h",
    "xen/memory.h",
    "xen/elfnote.h",
    "xen/hvm/hvm_op.h",
    "xen/hvm/params.h",
    "xen/arch-x86/hvm/start_info.h",
    "xen/io/ring.h",
    "xen/io/console.h",
    "xen/io/xs_wire.h",
    "xen/io/usbif.h",
];

/// Constants usbdom uses, as (C expression, our value).
fn constants() -> Vec<(&'static str, i64)> {
    use abi::elfnote::*;
    use abi::event_channel::*;
    use abi::grant_table::*;
    use abi::hvm::*;
    use abi::hypercall::*;
    use abi::memory::*;
    use abi::ring::*;
    use abi::start_info::*;
    use abi::usbif::*;
    use abi::xs_wire::*;
    let mut c: Vec<(&'static str, i64)> =
        vec![
        ("__HYPERVISOR_memory_op", HYPERVISOR_MEMORY_OP.into()),
        ("__HYPERVISOR_xen_version", HYPERVISOR_XEN_VERSION.into()),
        ("__HYPERVISOR_console_io", HYPERVISOR_CONSOLE_IO.into()),
        ("__HYPERVISOR_grant_table_op", HYPERVISOR_GRANT_TABLE_OP.into()),
        ("__HYPERVISOR_vcpu_op", HYPERVISOR_VCPU_OP.into()),
        ("__HYPERVISOR_sched_op", HYPERVISOR_SCHED_OP.into()),
        ("__HYPERVISOR_event_channel_op", HYPERVISOR_EVENT_CHANNEL_OP.into()),
        ("__HYPERVISOR_physdev_op", HYPERVISOR_PHYSDEV_OP.into()),
        ("__HYPERVISOR_hvm_op", HYPERVISOR_HVM_OP.into()),
        ("SCHEDOP_yield", SCHEDOP_YIELD.into()),
        ("SCHEDOP_block", SCHEDOP_BLOCK.into()),
        ("SCHEDOP_shutdown", SCHEDOP_SHUTDOWN.into()),
        ("SHUTDOWN_poweroff", SHUTDOWN_POWEROFF.into()),
        ("SHUTDOWN_reboot", SHUTDOWN_REBOOT.into()),
        ("SHUTDOWN_crash", SHUTDOWN_CRASH.into()),
        ("XENVER_version", XENVER_VERSION.into()),
        ("XENVER_get_features", XENVER_GET_FEATURES.into()),
        ("XENFEAT_auto_translated_physmap", XENFEAT_AUTO_TRANSLATED_PHYSMAP.into()),
        ("XENFEAT_hvm_callback_vector", XENFEAT_HVM_CALLBACK_VECTOR.into()),
        ("CONSOLEIO_write", CONSOLEIO_WRITE.into()),
        ("XEN_HVM_DEBUGCONS_IOPORT", XEN_HVM_DEBUGCONS_IOPORT.into()),
        ("DOMID_SELF", DomId::SELF.0.into()),
        ("DOMID_FIRST_RESERVED", DomId::FIRST_RESERVED.0.into()),
        ("(1 << XEN_PAGE_SHIFT)", abi::PAGE_SIZE as i64),
        ("XEN_PAGE_SHIFT", abi::PAGE_SHIFT.into()),
        ("EVTCHNOP_bind_interdomain", EVTCHNOP_BIND_INTERDOMAIN.into()),
        ("EVTCHNOP_bind_virq", EVTCHNOP_BIND_VIRQ.into()),
        ("EVTCHNOP_close", EVTCHNOP_CLOSE.into()),
        ("EVTCHNOP_send", EVTCHNOP_SEND.into()),
        ("EVTCHNOP_alloc_unbound", EVTCHNOP_ALLOC_UNBOUND.into()),
        ("EVTCHNOP_unmask", EVTCHNOP_UNMASK.into()),
        ("EVTCHN_2L_NR_CHANNELS", EVTCHN_2L_NR_CHANNELS.into()),
        ("GNTTABOP_map_grant_ref", GNTTABOP_MAP_GRANT_REF.into()),
        ("GNTTABOP_unmap_grant_ref", GNTTABOP_UNMAP_GRANT_REF.into()),
        ("GNTTABOP_setup_table", GNTTABOP_SETUP_TABLE.into()),
        ("GNTTABOP_copy", GNTTABOP_COPY.into()),
        ("GNTTABOP_query_size", GNTTABOP_QUERY_SIZE.into()),
        ("GNTTABOP_set_version", GNTTABOP_SET_VERSION.into()),
        ("GTF_permit_access", GTF_PERMIT_ACCESS.into()),
        ("GTF_readonly", GTF_READONLY.into()),
        ("GTF_reading", GTF_READING.into()),
        ("GTF_writing", GTF_WRITING.into()),
        ("GNTMAP_host_map", GNTMAP_HOST_MAP.into()),
        ("GNTMAP_readonly", GNTMAP_READONLY.into()),
        ("GNTCOPY_source_gref", GNTCOPY_SOURCE_GREF.into()),
        ("GNTCOPY_dest_gref", GNTCOPY_DEST_GREF.into()),
        ("GNTTAB_NR_RESERVED_ENTRIES", GNTTAB_NR_RESERVED_ENTRIES.into()),
        ("HVMOP_set_param", HVMOP_SET_PARAM.into()),
        ("HVMOP_get_param", HVMOP_GET_PARAM.into()),
        ("HVMOP_set_evtchn_upcall_vector", HVMOP_SET_EVTCHN_UPCALL_VECTOR.into()),
        ("HVM_PARAM_CALLBACK_IRQ", HVM_PARAM_CALLBACK_IRQ.into()),
        ("HVM_PARAM_STORE_PFN", HVM_PARAM_STORE_PFN.into()),
        ("HVM_PARAM_STORE_EVTCHN", HVM_PARAM_STORE_EVTCHN.into()),
        ("HVM_PARAM_CONSOLE_PFN", HVM_PARAM_CONSOLE_PFN.into()),
        ("HVM_PARAM_CONSOLE_EVTCHN", HVM_PARAM_CONSOLE_EVTCHN.into()),
        (
            "((long long)HVM_PARAM_CALLBACK_TYPE_VECTOR << 56 & HVM_PARAM_CALLBACK_IRQ_TYPE_MASK)",
            HVM_PARAM_CALLBACK_TYPE_VECTOR as i64,
        ),
        ("XENMEM_add_to_physmap", XENMEM_ADD_TO_PHYSMAP.into()),
        ("XENMEM_memory_map", XENMEM_MEMORY_MAP.into()),
        ("XENMAPSPACE_shared_info", XENMAPSPACE_SHARED_INFO.into()),
        ("XENMAPSPACE_grant_table", XENMAPSPACE_GRANT_TABLE.into()),
        ("XEN_HVM_START_MAGIC_VALUE", XEN_HVM_START_MAGIC_VALUE.into()),
        ("XEN_HVM_MEMMAP_TYPE_RAM", XEN_HVM_MEMMAP_TYPE_RAM.into()),
        ("XEN_HVM_MEMMAP_TYPE_RESERVED", XEN_HVM_MEMMAP_TYPE_RESERVED.into()),
        ("XEN_HVM_MEMMAP_TYPE_ACPI", XEN_HVM_MEMMAP_TYPE_ACPI.into()),
        ("XEN_HVM_MEMMAP_TYPE_NVS", XEN_HVM_MEMMAP_TYPE_NVS.into()),
        ("XEN_HVM_MEMMAP_TYPE_UNUSABLE", XEN_HVM_MEMMAP_TYPE_UNUSABLE.into()),
        ("XEN_HVM_MEMMAP_TYPE_DISABLED", XEN_HVM_MEMMAP_TYPE_DISABLED.into()),
        ("XEN_HVM_MEMMAP_TYPE_PMEM", XEN_HVM_MEMMAP_TYPE_PMEM.into()),
        ("XEN_ELFNOTE_INFO", XEN_ELFNOTE_INFO.into()),
        ("XEN_ELFNOTE_ENTRY", XEN_ELFNOTE_ENTRY.into()),
        ("XEN_ELFNOTE_HYPERCALL_PAGE", XEN_ELFNOTE_HYPERCALL_PAGE.into()),
        ("XEN_ELFNOTE_VIRT_BASE", XEN_ELFNOTE_VIRT_BASE.into()),
        ("XEN_ELFNOTE_PADDR_OFFSET", XEN_ELFNOTE_PADDR_OFFSET.into()),
        ("XEN_ELFNOTE_XEN_VERSION", XEN_ELFNOTE_XEN_VERSION.into()),
        ("XEN_ELFNOTE_GUEST_OS", XEN_ELFNOTE_GUEST_OS.into()),
        ("XEN_ELFNOTE_GUEST_VERSION", XEN_ELFNOTE_GUEST_VERSION.into()),
        ("XEN_ELFNOTE_LOADER", XEN_ELFNOTE_LOADER.into()),
        ("XEN_ELFNOTE_PAE_MODE", XEN_ELFNOTE_PAE_MODE.into()),
        ("XEN_ELFNOTE_FEATURES", XEN_ELFNOTE_FEATURES.into()),
        ("XEN_ELFNOTE_BSD_SYMTAB", XEN_ELFNOTE_BSD_SYMTAB.into()),
        ("XEN_ELFNOTE_HV_START_LOW", XEN_ELFNOTE_HV_START_LOW.into()),
        ("XEN_ELFNOTE_L1_MFN_VALID", XEN_ELFNOTE_L1_MFN_VALID.into()),
        ("XEN_ELFNOTE_SUSPEND_CANCEL", XEN_ELFNOTE_SUSPEND_CANCEL.into()),
        ("XEN_ELFNOTE_INIT_P2M", XEN_ELFNOTE_INIT_P2M.into()),
        ("XEN_ELFNOTE_MOD_START_PFN", XEN_ELFNOTE_MOD_START_PFN.into()),
        ("XEN_ELFNOTE_SUPPORTED_FEATURES", XEN_ELFNOTE_SUPPORTED_FEATURES.into()),
        ("XEN_ELFNOTE_PHYS32_ENTRY", XEN_ELFNOTE_PHYS32_ENTRY.into()),
        ("offsetof(struct usbif_urb_sring, req_prod)", SRING_REQ_PROD as i64),
        ("offsetof(struct usbif_urb_sring, req_event)", SRING_REQ_EVENT as i64),
        ("offsetof(struct usbif_urb_sring, rsp_prod)", SRING_RSP_PROD as i64),
        ("offsetof(struct usbif_urb_sring, rsp_event)", SRING_RSP_EVENT as i64),
        ("offsetof(struct usbif_urb_sring, pvt)", SRING_PVT as i64),
        ("offsetof(struct usbif_urb_sring, ring)", SRING_ENTRIES as i64),
        ("offsetof(struct usbif_conn_sring, ring)", SRING_ENTRIES as i64),
        ("sizeof(union usbif_urb_sring_entry)", xen::pvusb::URB_RING_ENTRY_SIZE as i64),
        ("sizeof(union usbif_conn_sring_entry)", xen::pvusb::CONN_RING_ENTRY_SIZE as i64),
        ("USB_URB_RING_SIZE", xen::pvusb::URB_RING_SIZE as i64),
        ("USB_CONN_RING_SIZE", xen::pvusb::CONN_RING_SIZE as i64),
        ("USBIF_MAX_SEGMENTS_PER_REQUEST", USBIF_MAX_SEGMENTS_PER_REQUEST as i64),
        ("USBIF_MAX_PORTNR", USBIF_MAX_PORTNR.into()),
        ("USBIF_RING_SIZE", USBIF_RING_SIZE as i64),
        ("USBIF_PIPE_PORT_MASK", USBIF_PIPE_PORT_MASK.into()),
        ("USBIF_PIPE_UNLINK", USBIF_PIPE_UNLINK.into()),
        ("USBIF_PIPE_DIR", USBIF_PIPE_DIR.into()),
        ("USBIF_PIPE_DEV_MASK", USBIF_PIPE_DEV_MASK.into()),
        ("USBIF_PIPE_DEV_SHIFT", USBIF_PIPE_DEV_SHIFT.into()),
        ("USBIF_PIPE_EP_MASK", USBIF_PIPE_EP_MASK.into()),
        ("USBIF_PIPE_EP_SHIFT", USBIF_PIPE_EP_SHIFT.into()),
        ("USBIF_PIPE_TYPE_MASK", USBIF_PIPE_TYPE_MASK.into()),
        ("USBIF_PIPE_TYPE_SHIFT", USBIF_PIPE_TYPE_SHIFT.into()),
        ("USBIF_PIPE_TYPE_ISOC", USBIF_PIPE_TYPE_ISOC.into()),
        ("USBIF_PIPE_TYPE_INT", USBIF_PIPE_TYPE_INT.into()),
        ("USBIF_PIPE_TYPE_CTRL", USBIF_PIPE_TYPE_CTRL.into()),
        ("USBIF_PIPE_TYPE_BULK", USBIF_PIPE_TYPE_BULK.into()),
        ("USBIF_SHORT_NOT_OK", USBIF_SHORT_NOT_OK.into()),
        ("USBIF_STATUS_OK", USBIF_STATUS_OK.into()),
        ("USBIF_STATUS_NODEV", USBIF_STATUS_NODEV.into()),
        ("USBIF_STATUS_INVAL", USBIF_STATUS_INVAL.into()),
        ("USBIF_STATUS_STALL", USBIF_STATUS_STALL.into()),
        ("USBIF_STATUS_IOERROR", USBIF_STATUS_IOERROR.into()),
        ("USBIF_STATUS_BABBLE", USBIF_STATUS_BABBLE.into()),
        ("USBIF_STATUS_SHUTDOWN", USBIF_STATUS_SHUTDOWN.into()),
        ("USBIF_SPEED_NONE", USBIF_SPEED_NONE.into()),
        ("USBIF_SPEED_LOW", USBIF_SPEED_LOW.into()),
        ("USBIF_SPEED_FULL", USBIF_SPEED_FULL.into()),
        ("USBIF_SPEED_HIGH", USBIF_SPEED_HIGH.into()),
        ("XENSTORE_PAYLOAD_MAX", XENSTORE_PAYLOAD_MAX as i64),
        ("XENSTORE_ABS_PATH_MAX", XENSTORE_ABS_PATH_MAX as i64),
        ("XENSTORE_REL_PATH_MAX", XENSTORE_REL_PATH_MAX as i64),
        ("XENSTORE_RING_SIZE", XENSTORE_RING_SIZE as i64),
        ("XENSTORE_SERVER_FEATURE_RECONNECTION", XENSTORE_SERVER_FEATURE_RECONNECTION.into()),
        ("XENSTORE_SERVER_FEATURE_ERROR", XENSTORE_SERVER_FEATURE_ERROR.into()),
        ("XENSTORE_CONNECTED", XENSTORE_CONNECTED.into()),
        ("XENSTORE_RECONNECT", XENSTORE_RECONNECT.into()),
        ("XENSTORE_ERROR_NONE", XENSTORE_ERROR_NONE.into()),
        ("XENSTORE_ERROR_COMM", XENSTORE_ERROR_COMM.into()),
        ("XENSTORE_ERROR_RINGIDX", XENSTORE_ERROR_RINGIDX.into()),
        ("XENSTORE_ERROR_PROTO", XENSTORE_ERROR_PROTO.into()),
    ];
    // The typed views of the `u` union of a URB request.
    for (expr, ours) in xen::pvusb::URB_UNION_MEMBERS {
        c.push((expr, *ours as i64));
    }
    // Every grant status.
    for raw in 0..=13i16 {
        let s = GntStatus::from_raw(-raw);
        assert_eq!(s as i16, -raw, "GntStatus is missing {}", -raw);
        c.push((gntst_c_name(s), (s as i16).into()));
    }
    // Every xenstore message type.
    for t in XsdSockmsgType::ALL {
        c.push((xs_c_name(t), (t as u32).into()));
    }
    c
}

fn gntst_c_name(s: GntStatus) -> &'static str {
    // The C names are GNTST_ + our name, except where C spells them otherwise.
    Box::leak(format!("GNTST_{}", s.name()).into_boxed_str())
}

fn xs_c_name(t: XsdSockmsgType) -> &'static str {
    let snake = format!("{t:?}")
        .chars()
        .enumerate()
        .flat_map(|(i, ch)| {
            let sep = (i > 0 && ch.is_ascii_uppercase()).then_some('_');
            sep.into_iter()
                .chain(std::iter::once(ch.to_ascii_uppercase()))
        })
        .collect::<String>();
    Box::leak(format!("XS_{snake}").into_boxed_str())
}

fn c_program() -> String {
    let mut p = String::new();
    // errno.h first: xs_wire.h only defines xsd_errors[] when the errno names exist.
    p.push_str(
        "#include <errno.h>\n#include <stddef.h>\n#include <stdio.h>\n#include <stdint.h>\n",
    );
    for h in HEADERS {
        writeln!(p, "#include <{h}>").unwrap();
    }
    p.push_str("int main(void) {\n");
    for s in abi::layouts() {
        writeln!(p, "  printf(\"S|{0}|%zu\\n\", sizeof({0}));", s.c_type).unwrap();
        for f in s.fields.iter().filter_map(|f| f.c_member) {
            writeln!(
                p,
                "  printf(\"F|{0}|{1}|%zu|%zu\\n\", offsetof({0}, {1}), sizeof((({0} *)0)->{1}));",
                s.c_type, f
            )
            .unwrap();
        }
    }
    for (expr, _) in constants() {
        writeln!(
            p,
            "  printf(\"C|%s|%lld\\n\", \"{0}\", (long long)({0}));",
            expr
        )
        .unwrap();
    }
    p.push_str(
        "  for (size_t i = 0; i < sizeof(xsd_errors) / sizeof(xsd_errors[0]); i++)\n\
         \x20   printf(\"E|%s|%d\\n\", xsd_errors[i].errstring, xsd_errors[i].errnum);\n",
    );
    p.push_str("  return 0;\n}\n");
    p
}

fn headers_present() -> bool {
    Path::new("/usr/include/xen/io/usbif.h").exists()
}

fn compile_and_run(src: &str) -> String {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("abi_matches_xen_headers");
    std::fs::create_dir_all(&dir).unwrap();
    let c = dir.join("layout.c");
    let exe = dir.join("layout");
    std::fs::write(&c, src).unwrap();
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    // The latest interface version of the installed headers: as Xen's own tools see them.
    let out = Command::new(&cc)
        .args([
            "-std=gnu11",
            "-Wall",
            "-Werror",
            "-Wno-unused-const-variable",
        ])
        .arg("-D__XEN_INTERFACE_VERSION__=__XEN_LATEST_INTERFACE_VERSION__")
        .arg(&c)
        .arg("-o")
        .arg(&exe)
        .output()
        .unwrap_or_else(|e| panic!("cannot run the C compiler {cc:?}: {e}"));
    assert!(
        out.status.success(),
        "compiling Xen's headers failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = Command::new(&exe).output().unwrap();
    assert!(run.status.success());
    String::from_utf8(run.stdout).unwrap()
}

#[test]
fn abi_matches_xen_headers() {
    assert!(
        headers_present(),
        "Xen's public headers are missing: install them with `apt-get install libxen-dev` \
         (`cargo xtask test` does this)"
    );
    let output = compile_and_run(&c_program());
    let mut sizes = BTreeMap::new();
    let mut fields = BTreeMap::new();
    let mut consts = BTreeMap::new();
    let mut xs_errors = Vec::new();
    for line in output.lines() {
        let parts: Vec<&str> = line.split('|').collect();
        match parts[0] {
            "S" => {
                sizes.insert(parts[1].to_owned(), parts[2].parse::<usize>().unwrap());
            }
            "F" => {
                let v = (
                    parts[3].parse::<usize>().unwrap(),
                    parts[4].parse::<usize>().unwrap(),
                );
                fields.insert((parts[1].to_owned(), parts[2].to_owned()), v);
            }
            "C" => {
                consts.insert(parts[1].to_owned(), parts[2].parse::<i64>().unwrap());
            }
            "E" => xs_errors.push((parts[1].to_owned(), parts[2].parse::<i32>().unwrap())),
            other => panic!("unexpected line kind {other:?}"),
        }
    }

    let mut mismatches = Vec::new();
    let (mut n_structs, mut n_fields) = (0, 0);
    for s in abi::layouts() {
        n_structs += 1;
        if sizes[s.c_type] != s.size {
            mismatches.push(format!(
                "sizeof({}) is {} in C, {} for {}",
                s.c_type, sizes[s.c_type], s.size, s.name
            ));
        }
        for f in s.fields {
            let Some(member) = f.c_member else { continue };
            n_fields += 1;
            let (off, size) = fields[&(s.c_type.to_owned(), member.to_owned())];
            if (off, size) != (f.offset, f.size) {
                mismatches.push(format!(
                    "{}.{}: C offset {off} size {size}, Rust {}.{} offset {} size {}",
                    s.c_type, member, s.name, f.name, f.offset, f.size
                ));
            }
        }
    }
    let ours = constants();
    for (expr, value) in &ours {
        if consts[*expr] != *value {
            mismatches.push(format!("{expr} is {} in C, {value} in Rust", consts[*expr]));
        }
    }
    let our_errors: Vec<(String, i32)> = XsdError::ALL
        .iter()
        .map(|e| (e.name().to_owned(), e.errno()))
        .collect();
    if xs_errors != our_errors {
        mismatches.push(format!(
            "xsd_errors[] is {xs_errors:?}, ours {our_errors:?}"
        ));
    }
    assert!(
        mismatches.is_empty(),
        "ABI mismatches:\n{}",
        mismatches.join("\n")
    );
    println!("abi: {n_structs} structs, {n_fields} fields match Xen headers");
    println!(
        "abi: {} constants and {} xenstore error names match Xen headers",
        ours.len(),
        xs_errors.len()
    );
}
