//! The backup file of `baton snapshot save` and `baton snapshot restore`.
//!
//! ```text
//! magic    8 bytes   "BATONBAK"
//! version  u32 BE    FORMAT_VERSION
//! hlen     u32 BE    length of the header
//! header   hlen      JSON Header: revision, source cluster and members, body length
//! body     body_len  bincode Body: the replicated State and the audit trail behind it (the
//!                    entries the node kept: from seq 0, or from after its compaction
//!                    checkpoint, ending at the state's audit head)
//! trailer  40 bytes  "BATONEND" + SHA-256 of every byte before the trailer
//! ```
//!
//! The header is JSON so that `head -c` shows a person what a file holds; the body is the
//! same bincode encoding the Raft snapshots use, so a restore seeds exactly what a snapshot
//! install would. The trailer comes last so a cut-off file never passes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::raft::{NodeId, NodeInfo};
use crate::state::audit::GENESIS;
use crate::state::{AuditEntry, State};

/// The first bytes of every backup file.
pub const MAGIC: &[u8; 8] = b"BATONBAK";
/// The trailer's marker, before the checksum.
pub const END: &[u8; 8] = b"BATONEND";
/// The format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Bytes of the trailer.
pub const TRAILER: usize = 8 + 32;
/// Bytes before the header.
const PREFIX: usize = 8 + 4 + 4;
/// Largest header accepted (it lists the members; a few KiB in practice).
const MAX_HEADER: usize = 1 << 20;
/// Bytes of file data per streamed chunk (well below the 1 MiB message bound).
pub const CHUNK_BYTES: usize = 256 * 1024;
/// The most file data one chunk may carry.
pub const MAX_CHUNK_BYTES: usize = 1 << 20;

/// A member of the cluster a backup came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Node id.
    pub id: NodeId,
    /// Its advertised address.
    pub addr: String,
    /// Its region.
    pub region: String,
    /// Whether it voted.
    pub voter: bool,
}

/// What a backup holds, readable without decoding the body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// The applied log index the state reflects: every token in it is at most this.
    pub revision: u64,
    /// When the backup was taken, ms since the Unix epoch (the leader's clock).
    pub created_unix_ms: i64,
    /// The source cluster's name (`cluster` in node.toml).
    pub source_cluster: String,
    /// The node that served it (the leader).
    pub source_node: NodeId,
    /// The source cluster's members.
    pub members: Vec<Member>,
    /// Number of services.
    pub services: u32,
    /// Number of audit entries.
    pub audit_entries: u64,
    /// Seq of the first audit entry (above 0 when older ones were compacted away). Absent
    /// from files written before compaction existed, which start at 0.
    #[serde(default)]
    pub audit_first_seq: u64,
    /// Bytes of the body.
    pub body_len: u64,
}

/// The replicated state and the audit trail it points at.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Body {
    /// The state machine's state.
    pub state: State,
    /// The retained audit entries, up to `state.audit_head().next_seq - 1`: from seq 0, or
    /// from after the source node's compaction checkpoint.
    pub audit: Vec<AuditEntry>,
}

/// A decoded, verified backup.
#[derive(Debug, Clone)]
pub struct Backup {
    /// Its header.
    pub header: Header,
    /// Its body.
    pub body: Body,
    /// The checksum the trailer carries (hex).
    pub sha256: String,
    /// Bytes of the file.
    pub size: u64,
}

/// Why a file is not a usable backup. Every message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// Not a baton backup at all.
    #[error("not a baton snapshot file (it does not start with {MAGIC:?}); pass a file written by `baton snapshot save`")]
    NotBackup,
    /// The file ends early.
    #[error("the snapshot file is truncated: {have} bytes, its header says {want}; the copy is incomplete, use the original or save a new snapshot")]
    Truncated {
        /// Bytes present.
        have: u64,
        /// Bytes the header announces.
        want: u64,
    },
    /// The checksum does not match.
    #[error("the snapshot file is corrupted: its SHA-256 is {actual}, the file records {recorded}; use an intact copy or save a new snapshot")]
    Corrupt {
        /// Checksum computed over the file.
        actual: String,
        /// Checksum the trailer records.
        recorded: String,
    },
    /// Written by another format version.
    #[error("the snapshot file has format version {found}; this baton reads version {FORMAT_VERSION}: restore it with the baton release that saved it")]
    Version {
        /// The version found.
        found: u32,
    },
    /// The checksum matched but the content makes no sense (a bug, or another build).
    #[error("the snapshot file is intact but cannot be decoded ({0}); restore it with the baton release that saved it")]
    Decode(String),
}

fn hex_digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Writes a backup of `body` with `header` (its counts and `body_len` are filled in here);
/// returns the file bytes and the checksum.
pub fn encode(mut header: Header, body: &Body) -> Result<(Vec<u8>, String), BackupError> {
    let body_bytes = bincode::serialize(body).map_err(|e| BackupError::Decode(e.to_string()))?;
    header.body_len = body_bytes.len() as u64;
    header.services = u32::try_from(body.state.service_count()).unwrap_or(u32::MAX);
    header.audit_entries = body.audit.len() as u64;
    header.audit_first_seq = body.audit.first().map_or(0, |e| e.seq);
    let header_bytes =
        serde_json::to_vec(&header).map_err(|e| BackupError::Decode(e.to_string()))?;
    let hlen = u32::try_from(header_bytes.len())
        .map_err(|_| BackupError::Decode("header too large".into()))?;
    let mut out = Vec::with_capacity(PREFIX + header_bytes.len() + body_bytes.len() + TRAILER);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
    out.extend_from_slice(&hlen.to_be_bytes());
    out.extend_from_slice(&header_bytes);
    out.extend_from_slice(&body_bytes);
    let digest = Sha256::digest(&out);
    out.extend_from_slice(END);
    out.extend_from_slice(&digest);
    Ok((out, hex::encode(digest)))
}

fn be_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Reads and verifies a backup: the checksum first (a truncated file is named as such),
/// then the version, then the body and its audit chain. Nothing is trusted before the
/// checksum matched.
pub fn decode(bytes: &[u8]) -> Result<Backup, BackupError> {
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err(BackupError::NotBackup);
    }
    let have = bytes.len() as u64;
    // What the (not yet verified) header announces, to tell truncation from corruption.
    let announced = || -> Option<u64> {
        let hlen = be_u32(bytes, 12)? as usize;
        let header: Header = serde_json::from_slice(bytes.get(PREFIX..PREFIX + hlen)?).ok()?;
        Some((PREFIX + hlen + TRAILER) as u64 + header.body_len)
    };
    let whole = bytes.len() >= PREFIX + TRAILER;
    let (content, trailer) = bytes.split_at(bytes.len() - if whole { TRAILER } else { 0 });
    let has_trailer = whole && &trailer[..8] == END;
    if !(has_trailer && Sha256::digest(content).as_slice() == &trailer[8..]) {
        // No trailer where one belongs: the file was cut short (a whole file with a bad
        // checksum is corrupted, whatever its header says).
        if !has_trailer && announced().is_none_or(|want| have < want) {
            let want = announced().unwrap_or(have + TRAILER as u64);
            return Err(BackupError::Truncated { have, want });
        }
        return Err(BackupError::Corrupt {
            actual: hex_digest(content),
            recorded: if has_trailer {
                hex::encode(&trailer[8..])
            } else {
                "nothing (no valid trailer)".to_string()
            },
        });
    }
    let found = be_u32(bytes, 8).unwrap_or(0);
    if found != FORMAT_VERSION {
        return Err(BackupError::Version { found });
    }
    let hlen = be_u32(bytes, 12).unwrap_or(0) as usize;
    if hlen > MAX_HEADER || PREFIX + hlen + TRAILER > bytes.len() {
        return Err(BackupError::Decode(format!("header of {hlen} bytes")));
    }
    let header: Header = serde_json::from_slice(&bytes[PREFIX..PREFIX + hlen])
        .map_err(|e| BackupError::Decode(format!("header: {e}")))?;
    let body_bytes = &bytes[PREFIX + hlen..bytes.len() - TRAILER];
    if body_bytes.len() as u64 != header.body_len {
        return Err(BackupError::Decode(format!(
            "body is {} bytes, the header says {}",
            body_bytes.len(),
            header.body_len
        )));
    }
    let body: Body =
        bincode::deserialize(body_bytes).map_err(|e| BackupError::Decode(format!("body: {e}")))?;
    check_body(&header, &body).map_err(BackupError::Decode)?;
    Ok(Backup {
        header,
        body,
        sha256: hex::encode(&bytes[bytes.len() - 32..]),
        size: have,
    })
}

/// The audit trail is contiguous, chained, and ends where the state says it does. A trail
/// cut by compaction starts later: its first entry's link is its anchor (the checkpoint).
fn check_body(header: &Header, body: &Body) -> Result<(), String> {
    let head = body.state.audit_head();
    let len = body.audit.len() as u64;
    if len > head.next_seq || (len == 0 && head.next_seq > 0) {
        return Err(format!(
            "{len} audit entries, the state expects up to {}",
            head.next_seq
        ));
    }
    let first = head.next_seq - len;
    if header.audit_first_seq != first && !(header.audit_first_seq == 0 && len == 0) {
        return Err(format!(
            "the audit trail starts at {first}, the header says {}",
            header.audit_first_seq
        ));
    }
    let mut prev = match body.audit.first() {
        Some(e) if e.seq > 0 => e.prev_hash.clone(),
        _ => GENESIS.to_string(),
    };
    for (i, e) in body.audit.iter().enumerate() {
        let seq = first + i as u64;
        if e.seq != seq || e.prev_hash != prev || e.compute_hash() != e.hash {
            return Err(format!("audit chain broken at entry {seq}"));
        }
        prev = e.hash.clone();
    }
    if prev != head.last_hash {
        return Err("the audit chain does not end at the state's audit head".into());
    }
    if body.state.revision() > header.revision {
        return Err(format!(
            "state revision {} is past the backup's revision {}",
            body.state.revision(),
            header.revision
        ));
    }
    Ok(())
}

/// The members of a new cluster as `--members` spells them: `ID=HOST:PORT@REGION,...`.
pub fn parse_members(s: &str) -> Result<BTreeMap<NodeId, NodeInfo>, String> {
    let mut out = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || format!("{part:?} is not ID=HOST:PORT@REGION (e.g. 1=10.0.0.1:7100@us-east)");
        let (id, rest) = part.split_once('=').ok_or_else(bad)?;
        let (addr, region) = rest.rsplit_once('@').ok_or_else(bad)?;
        let id: NodeId = id.trim().parse().map_err(|_| bad())?;
        if id == 0 {
            return Err(format!("{part:?}: node ids are positive integers"));
        }
        crate::config::check_addr(addr).map_err(|m| format!("{part:?}: {m}"))?;
        crate::state::names::check_name("region", region).map_err(|m| format!("{part:?}: {m}"))?;
        let node = NodeInfo {
            addr: addr.to_string(),
            region: region.to_string(),
        };
        if out.insert(id, node).is_some() {
            return Err(format!("node {id} is listed twice"));
        }
    }
    if out.is_empty() {
        return Err(
            "no members: list every voter of the new cluster as ID=HOST:PORT@REGION,...".into(),
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (Vec<u8>, String) {
        let header = Header {
            revision: 7,
            created_unix_ms: 1,
            source_cluster: "c".into(),
            source_node: 1,
            members: vec![Member {
                id: 1,
                addr: "127.0.0.1:1".into(),
                region: "r".into(),
                voter: true,
            }],
            services: 0,
            audit_entries: 0,
            audit_first_seq: 0,
            body_len: 0,
        };
        let body = Body {
            state: State::default(),
            audit: Vec::new(),
        };
        encode(header, &body).unwrap()
    }

    #[test]
    fn a_backup_round_trips() {
        let (bytes, sum) = sample();
        let b = decode(&bytes).unwrap();
        assert_eq!(b.sha256, sum);
        assert_eq!(b.header.revision, 7);
        assert_eq!(b.size, bytes.len() as u64);
    }

    #[test]
    fn every_flipped_byte_and_every_cut_is_refused() {
        let (bytes, _) = sample();
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x01;
            assert!(decode(&bad).is_err(), "byte {i} flipped was accepted");
        }
        for len in 0..bytes.len() {
            let err = decode(&bytes[..len]).unwrap_err();
            if len >= MAGIC.len() + 8 + 2 {
                assert!(
                    matches!(err, BackupError::Truncated { .. }),
                    "cut at {len}: {err}"
                );
            }
        }
        let mut v2 = bytes.clone();
        v2[11] = 2;
        // A changed version breaks the checksum too: corruption is reported first.
        assert!(matches!(decode(&v2), Err(BackupError::Corrupt { .. })));
    }

    #[test]
    fn members_parse_with_clear_errors() {
        let m = parse_members("1=127.0.0.1:7101@us-east,2=127.0.0.1:7102@eu-west").unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[&2].region, "eu-west");
        assert!(parse_members("1=127.0.0.1:7101")
            .unwrap_err()
            .contains("ID=HOST:PORT@REGION"));
        assert!(parse_members("0=127.0.0.1:7101@a").is_err());
        assert!(parse_members("1=a:1@r,1=b:2@r")
            .unwrap_err()
            .contains("twice"));
        assert!(parse_members("").is_err());
    }
}
