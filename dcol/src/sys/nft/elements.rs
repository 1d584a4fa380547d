//! Set elements on the wire: the concatenated keys, the NEWSETELEM and
//! DELSETELEM messages that add or delete a tunnel's two elements, and
//! decoding the kernel's element and quota listings.

use super::*;

/// A map key or value: address then port, each padded to 4-byte registers
/// (IPv4: 4 + 2 + 2 pad = 8 bytes; IPv6: 16 + 4 = 20). Port big-endian.
pub(super) fn concat(ip: IpAddr, port: u16) -> Vec<u8> {
    let mut v = match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    v.extend_from_slice(&port.to_be_bytes());
    v.extend_from_slice(&[0, 0]);
    v
}

pub(super) fn parse_concat(b: &[u8], v6: bool) -> Option<(IpAddr, u16)> {
    let (ip, rest): (IpAddr, &[u8]) = if v6 {
        let a: [u8; 16] = b.get(..16)?.try_into().ok()?;
        (Ipv6Addr::from(a).into(), b.get(16..)?)
    } else {
        let a: [u8; 4] = b.get(..4)?.try_into().ok()?;
        (Ipv4Addr::from(a).into(), b.get(4..)?)
    };
    if rest.len() != 4 {
        return None;
    }
    Some((ip, u16::from_be_bytes([rest[0], rest[1]])))
}

/// A flow set's key: the map's key followed by its value (IPv4 16 bytes,
/// IPv6 40), the order of the `translated` chain's lookup.
pub(super) fn flow_key(el: &NatElement) -> Vec<u8> {
    let mut k = concat(el.client, el.port);
    k.extend(concat(el.destination.ip(), el.destination.port()));
    k
}

/// Builds a NEWSETELEM (key, then `timeout` if any, then `data` if any) or
/// DELSETELEM (key only) message for one element of `set` in table
/// `inet <table>`.
pub(super) fn elem_msg(
    add: bool,
    table: &str,
    set: &str,
    key: &[u8],
    data: Option<&[u8]>,
    timeout: Option<Duration>,
) -> Result<NfMsg, SysError> {
    let op = "nft set element";
    let (msg, flags) = if add {
        (NFT_MSG_NEWSETELEM, NlmF::CREATE)
    } else {
        (NFT_MSG_DELSETELEM, NlmF::empty())
    };
    let mut fields = vec![nest(
        op,
        NFTA_SET_ELEM_KEY,
        &[attr(op, NFTA_DATA_VALUE, key)?],
    )?];
    if add {
        if let Some(t) = timeout {
            let ms = t.as_millis().clamp(1, u128::from(u64::MAX)) as u64;
            fields.push(attr(op, NFTA_SET_ELEM_TIMEOUT, &ms.to_be_bytes())?);
        }
        if let Some(d) = data {
            fields.push(nest(
                op,
                NFTA_SET_ELEM_DATA,
                &[attr(op, NFTA_DATA_VALUE, d)?],
            )?);
        }
    }
    let elems = nest(
        op,
        NFTA_SET_ELEM_LIST_ELEMENTS,
        &[nest(op, NFTA_LIST_ELEM, &fields)?],
    )?;
    Ok(nft_msg(
        msg,
        flags,
        set_elem_list(op, table, set, Some(elems))?,
    ))
}

/// The attributes of a set element message: table, set and, if any, the
/// element list.
pub(super) fn set_elem_list(
    op: &'static str,
    table: &str,
    set: &str,
    elems: Option<Attr>,
) -> Result<Vec<Attr>, SysError> {
    let mut attrs = vec![
        attr_str(op, NFTA_SET_ELEM_LIST_TABLE, table)?,
        attr_str(op, NFTA_SET_ELEM_LIST_SET, set)?,
    ];
    attrs.extend(elems);
    Ok(attrs)
}

/// What [`tunnel_msgs`] does to a tunnel's two elements.
#[derive(Debug, Clone, Copy)]
pub(super) enum Op {
    /// Add both with this timeout.
    Add(Duration),
    /// Delete both, whether or not they exist (or have expired).
    Delete,
}

/// The messages that add or delete a tunnel's map element and flow element.
/// A deletion is add-then-delete of each, so that it succeeds whether the
/// kernel still holds the element or it has expired (`ENOENT` would abort
/// the whole batch): the add is a no-op for an element already there with
/// the same data, and carries no timeout, so that no kernel takes it for a
/// timeout update. Fails for mixed address families.
pub(super) fn tunnel_msgs(
    op: &'static str,
    kind: Op,
    table: &str,
    el: &NatElement,
) -> Result<Vec<NfMsg>, SysError> {
    check_family(op, el)?;
    let (map, flows) = if el.client.is_ipv4() {
        (MAP4, FLOWS4)
    } else {
        (MAP6, FLOWS6)
    };
    let key = concat(el.client, el.port);
    let data = concat(el.destination.ip(), el.destination.port());
    let fkey = flow_key(el);
    Ok(match kind {
        Op::Add(t) => vec![
            elem_msg(true, table, map, &key, Some(&data), Some(t))?,
            elem_msg(true, table, flows, &fkey, None, Some(t))?,
        ],
        Op::Delete => vec![
            elem_msg(true, table, map, &key, Some(&data), None)?,
            elem_msg(false, table, map, &key, None, None)?,
            elem_msg(true, table, flows, &fkey, None, None)?,
            elem_msg(false, table, flows, &fkey, None, None)?,
        ],
    })
}

pub(super) fn check_family(op: &'static str, el: &NatElement) -> Result<(), SysError> {
    if el.client.is_ipv4() == el.destination.is_ipv4() {
        Ok(())
    } else {
        Err(SysError::io(
            op,
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "client {} and destination {} differ in address family",
                    el.client, el.destination
                ),
            ),
        ))
    }
}

/// Builds a NEWSETELEM or DELSETELEM message for `el` in its family's map.
/// Deletion carries only the key; `timeout` only matters for NEWSETELEM
/// (none: 1 ms).
pub(super) fn setelem_msg(
    op: &'static str,
    msg: u8,
    table: &str,
    el: &NatElement,
    timeout: Option<Duration>,
) -> Result<NfMsg, SysError> {
    check_family(op, el)?;
    let map = if el.client.is_ipv4() { MAP4 } else { MAP6 };
    let data = concat(el.destination.ip(), el.destination.port());
    elem_msg(
        msg == NFT_MSG_NEWSETELEM,
        table,
        map,
        &concat(el.client, el.port),
        Some(&data),
        Some(timeout.unwrap_or_default()),
    )
}

/// Decodes one GETSETELEM reply (nfgenmsg + attributes). Elements whose key or
/// data do not have our layout are logged and skipped.
pub fn decode_setelems(payload: &[u8], v6: bool) -> Result<Vec<NatElement>, SysError> {
    let op = "nft decode set elements";
    let mut out = Vec::new();
    for a in Nfgenmsg::decode(op, payload)?.attrs().iter() {
        if ty(a) != NFTA_SET_ELEM_LIST_ELEMENTS {
            continue;
        }
        for e in nested(op, a)?.iter() {
            if ty(e) != NFTA_LIST_ELEM {
                continue;
            }
            let (mut key, mut data, mut expires) = (None, None, None);
            for f in nested(op, e)?.iter() {
                match ty(f) {
                    NFTA_SET_ELEM_KEY | NFTA_SET_ELEM_DATA => {
                        for v in nested(op, f)?.iter() {
                            if ty(v) == NFTA_DATA_VALUE {
                                let p = parse_concat(v.nla_payload().as_ref(), v6);
                                if ty(f) == NFTA_SET_ELEM_KEY {
                                    key = p;
                                } else {
                                    data = p;
                                }
                            }
                        }
                    }
                    NFTA_SET_ELEM_EXPIRATION => expires = Some(Duration::from_millis(be64(op, f)?)),
                    _ => {}
                }
            }
            match (key, data) {
                (Some((client, port)), Some((dip, dport))) => out.push(NatElement {
                    client,
                    port,
                    destination: SocketAddr::new(dip, dport),
                    expires_in: expires,
                }),
                _ => log::warn!(
                    "nft: skipped a map element that is not address . port : address . port"
                ),
            }
        }
    }
    Ok(out)
}

/// The bytes a quota object has counted: `NFTA_QUOTA_CONSUMED` in the
/// `NFTA_OBJ_DATA` of a NEWOBJ body (`None` without it).
pub fn quota_consumed(payload: &[u8]) -> Result<Option<u64>, SysError> {
    let op = "nft decode quota";
    let mut used = None;
    for a in Nfgenmsg::decode(op, payload)?.attrs().iter() {
        if ty(a) == NFTA_OBJ_DATA {
            for q in nested(op, a)?.iter() {
                if ty(q) == NFTA_QUOTA_CONSUMED {
                    used = Some(be64(op, q)?);
                }
            }
        }
    }
    Ok(used)
}

/// Builds a NEWSETELEM (with `timeout`) or DELSETELEM message for one key of a
/// plain set (no data) `set` in table `inet <table>`.
pub(crate) fn set_key_msg(
    msg_add: bool,
    table: &str,
    set: &str,
    key: &[u8],
    timeout: Option<Duration>,
) -> Result<NfMsg, SysError> {
    elem_msg(msg_add, table, set, key, None, timeout)
}

/// DELSETELEM without elements: flushes set `set` of table `inet <table>`.
pub(crate) fn flush_set_msg(table: &str, set: &str) -> Result<NfMsg, SysError> {
    let attrs = set_elem_list("nft flush set", table, set, None)?;
    Ok(nft_msg(NFT_MSG_DELSETELEM, NlmF::empty(), attrs))
}

/// The messages that replace the content of set `set` (type `ifname`) of
/// table `inet <table>` with `names`: a flush, then one NEWSETELEM with every
/// name (none for an empty list). Send them as one batch.
pub(crate) fn set_names_msgs(
    table: &str,
    set: &str,
    names: &[String],
) -> Result<Vec<NfMsg>, SysError> {
    let op = "nft interface name";
    for n in names {
        if n.is_empty() || n.len() >= IFNAMSIZ || n.contains('\0') {
            return Err(SysError::io(
                op,
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{n:?}: an interface name has 1-15 bytes"),
                ),
            ));
        }
    }
    let mut msgs = vec![flush_set_msg(table, set)?];
    if !names.is_empty() {
        let mut list = Vec::with_capacity(names.len());
        for n in names {
            let mut key = [0u8; IFNAMSIZ];
            key[..n.len()].copy_from_slice(n.as_bytes());
            let k = nest(op, NFTA_SET_ELEM_KEY, &[attr(op, NFTA_DATA_VALUE, &key)?])?;
            list.push(nest(op, NFTA_LIST_ELEM, &[k])?);
        }
        let elems = nest(op, NFTA_SET_ELEM_LIST_ELEMENTS, &list)?;
        let attrs = set_elem_list(op, table, set, Some(elems))?;
        msgs.push(nft_msg(NFT_MSG_NEWSETELEM, NlmF::CREATE, attrs));
    }
    Ok(msgs)
}
