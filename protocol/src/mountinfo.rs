//! `/proc/PID/mountinfo`: the target's mount table, as the agent reads it and sends it in the
//! hello, parsed on the client's side to choose which paths the session shows from the target.
//! The text comes from the other side of the connection: any line that is not a well-formed
//! mountinfo line is skipped, never trusted.

use std::path::PathBuf;

/// One line of `/proc/PID/mountinfo`, the fields that tell mounts apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountLine {
    pub mount_point: PathBuf,
    pub root: String,
    pub fs_type: String,
    pub source: String,
}

/// Parses `mountinfo` text; malformed lines are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<MountLine> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let separator = fields.iter().position(|&field| field == "-")?;
            Some(MountLine {
                root: unescape(fields.get(3)?),
                mount_point: PathBuf::from(unescape(fields.get(4)?)),
                fs_type: fields.get(separator + 1)?.to_string(),
                source: unescape(fields.get(separator + 2)?),
            })
        })
        .collect()
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let value = bytes[i + 1..i + 4]
                .iter()
                .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
            out.push(value as u8);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
