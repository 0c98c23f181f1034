//! `portguard catalog import-endpoints FILE`: Microsoft 365's endpoints JSON
//! (a saved copy of https://endpoints.office.com/endpoints/worldwide) as an
//! `[[addresses]]` block of the catalog, printed to stdout.
//!
//! The JSON is an array of endpoint sets, each an object with `id`,
//! `serviceArea` (`Exchange`, `SharePoint`, `Skype`, `Common`),
//! `serviceAreaDisplayName`, `urls`, `ips`, `tcpPorts`, `udpPorts`,
//! `category`, `required` and `notes` (Microsoft's "Office 365 IP Address
//! and URL web service"). The sets of one service area give their `ips`;
//! the block holds them sorted, each once, IPv4 first. The JSON carries no
//! version (the web service's `version` method gives it): `--version` puts
//! one in the note.

use std::{fmt::Write as _, path::Path};

use portguard::{
    catalog::{Cidr, read_bounded},
    exit,
};
use serde_json::Value;

/// The largest endpoints file read: the worldwide list is about 100 KB.
const MAX_ENDPOINTS_BYTES: u64 = 16 * 1024 * 1024;

/// Why a file is not an endpoints list, as `file: message` (or
/// `file:line:col: message` for bad JSON).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ImportError(String);

/// What the block is made of.
#[derive(Debug, PartialEq, Eq)]
pub struct Imported {
    pub cidrs: Vec<Cidr>,
    /// The ids of the endpoint sets that gave ranges, in file order.
    pub sets: Vec<i64>,
}

/// The ranges of `service_area`'s endpoint sets in `text` (the file named
/// `origin`).
pub fn ranges(text: &str, origin: &str, service_area: &str) -> Result<Imported, ImportError> {
    let json: Value = serde_json::from_str(text).map_err(|e| {
        // The place goes in front, as for a catalog; the message without it.
        let message = e.to_string();
        let message = message
            .rsplit_once(" at line ")
            .map_or(message.as_str(), |(m, _)| m);
        ImportError(format!(
            "{origin}:{}:{}: not JSON: {message}",
            e.line(),
            e.column()
        ))
    })?;
    let Value::Array(sets) = json else {
        return Err(ImportError(format!(
            "{origin}: not an endpoints list: the JSON is not an array (save https://endpoints.office.com/endpoints/worldwide as it comes)"
        )));
    };
    let mut cidrs = Vec::new();
    let mut ids = Vec::new();
    for (n, set) in sets.iter().enumerate() {
        let Value::Object(set) = set else {
            return Err(ImportError(format!(
                "{origin}: element {n} of the list is not an object"
            )));
        };
        let id = set
            .get("id")
            .and_then(Value::as_i64)
            .ok_or_else(|| ImportError(format!("{origin}: element {n} has no numeric `id`")))?;
        if set.get("serviceArea").and_then(Value::as_str) != Some(service_area) {
            continue;
        }
        let Some(ips) = set.get("ips") else {
            // Name-only sets (URLs and ports) have no `ips`.
            continue;
        };
        let ips = ips.as_array().ok_or_else(|| {
            ImportError(format!(
                "{origin}: endpoint set {id}: `ips` is not an array"
            ))
        })?;
        for ip in ips {
            let text = ip.as_str().ok_or_else(|| {
                ImportError(format!(
                    "{origin}: endpoint set {id}: an `ips` entry is not a string"
                ))
            })?;
            let cidr = Cidr::parse(text)
                .map_err(|e| ImportError(format!("{origin}: endpoint set {id}: {e}")))?;
            cidrs.push(cidr);
        }
        if !ips.is_empty() {
            ids.push(id);
        }
    }
    if cidrs.is_empty() {
        return Err(ImportError(format!(
            "{origin}: no IP ranges for service area `{service_area}` ({} endpoint sets read)",
            sets.len()
        )));
    }
    cidrs.sort();
    cidrs.dedup();
    Ok(Imported { cidrs, sets: ids })
}

/// A TOML string: quotes and backslashes escaped, control characters as \u.
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The `[[addresses]]` block for `imported`, commented with where it came from.
pub fn render(
    imported: &Imported,
    id: &str,
    origin: &str,
    service_area: &str,
    version: Option<&str>,
) -> String {
    let v4 = imported.cidrs.iter().filter(|c| c.addr.is_ipv4()).count();
    let v6 = imported.cidrs.len() - v4;
    let sets: Vec<String> = imported.sets.iter().map(i64::to_string).collect();
    let version_text = version.map_or_else(
        || "version not given".to_string(),
        |v| format!("version {v}"),
    );
    // A line break in the file's name would end a comment.
    let shown = origin.replace(['\n', '\r'], "?");
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# portguard catalog import-endpoints: Microsoft 365's endpoints JSON {shown}\n\
         # ({version_text}), service area {service_area}: endpoint sets {}.\n\
         # {} prefixes ({v4} IPv4, {v6} IPv6), sorted, each once. Put this block in place\n\
         # of the catalog's `{id}` set, check the catalog, then reload\n\
         # (docs/catalog.md, \"Microsoft 365 hybrid\").",
        sets.join(", "),
        imported.cidrs.len(),
    );
    let _ = writeln!(out, "[[addresses]]\nid = {}\ncidrs = [", toml_string(id));
    for c in &imported.cidrs {
        let _ = writeln!(out, "    \"{c}\",");
    }
    let _ = writeln!(
        out,
        "]\nnote = {}",
        toml_string(&format!(
            "Microsoft 365's {service_area} service area IP ranges (Skype for Business Online and Microsoft Teams), imported from {shown}, {version_text}."
        ))
    );
    out
}

/// `portguard catalog import-endpoints`: 0, 2 for a file that is not an
/// endpoints list (or a bad id), 1 if stdout fails.
pub fn import_endpoints(path: &Path, service_area: &str, id: &str, version: Option<&str>) -> u8 {
    let origin = path.display().to_string();
    if !valid_set_id(id) {
        eprintln!(
            "portguard catalog import-endpoints: --id `{id}`: set ids are lowercase letters, digits and `-`, starting with a letter"
        );
        return exit::USAGE;
    }
    let text = match read_bounded(path, MAX_ENDPOINTS_BYTES) {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(text) => text,
            Err(e) => {
                eprintln!("{origin}: not UTF-8: {e}");
                return exit::USAGE;
            }
        },
        Err(e) => {
            eprintln!("{origin}: {e}");
            return exit::USAGE;
        }
    };
    match ranges(&text, &origin, service_area) {
        Ok(imported) => super::write_out(
            "import-endpoints",
            &render(&imported, id, &origin, service_area, version),
        ),
        Err(e) => {
            eprintln!("{e}");
            exit::USAGE
        }
    }
}

fn valid_set_id(id: &str) -> bool {
    id.starts_with(|c: char| c.is_ascii_lowercase())
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use portguard::catalog::Catalog;

    const SAMPLE: &str = include_str!("../../../../tests/data/endpoints-worldwide-sample.json");

    #[test]
    fn the_sample_gives_the_skype_ranges_sorted_and_once() {
        let got = ranges(SAMPLE, "sample.json", "Skype").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            got.sets,
            [11, 12, 13, 22],
            "the Skype sets that list ranges"
        );
        let text: Vec<String> = got.cidrs.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "13.107.64.0/18",
                "52.112.0.0/14",
                "52.122.0.0/15",
                "52.238.119.141/32",
                "52.244.160.207/32",
                "2603:1027::/48",
                "2603:1037::/48",
                "2603:1047::/48",
                "2603:1057::/48",
                "2603:1063::/39",
                "2620:1ec:6::/48",
                "2620:1ec:40::/42",
            ],
            "IPv4 then IPv6, each once, none of Exchange's"
        );
    }

    /// The block is a catalog's `[[addresses]]`: appended to the embedded
    /// catalog in place of its set, it parses and gives the same set.
    #[test]
    fn the_block_replaces_the_catalogs_set() {
        let got = ranges(SAMPLE, "sample.json", "Skype").unwrap_or_else(|e| panic!("{e}"));
        let block = render(
            &got,
            "microsoft-365",
            "sample.json",
            "Skype",
            Some("2023073100"),
        );
        assert!(
            block.contains("note = \"Microsoft 365's Skype service area IP ranges (Skype for Business Online and Microsoft Teams), imported from sample.json, version 2023073100.\""),
            "{block}"
        );
        let embedded = Catalog::embedded_text();
        let start = embedded
            .find("[[addresses]]\nid = \"microsoft-365\"")
            .expect("the embedded catalog has the set");
        let end = start
            + embedded[start..]
                .find("\nnote = ")
                .and_then(|n| embedded[start + n + 1..].find('\n').map(|m| n + 1 + m + 1))
                .expect("the set's note ends a line");
        let replaced = format!("{}{block}{}", &embedded[..start], &embedded[end..]);
        let (c, _) = Catalog::parse(&replaced, "replaced.toml").unwrap_or_else(|e| panic!("{e}"));
        let set = c
            .addresses
            .iter()
            .find(|s| s.id == "microsoft-365")
            .expect("the set is there");
        assert_eq!(set.cidrs, got.cidrs);
        assert_eq!(
            set.cidrs,
            Catalog::embedded()
                .addresses
                .iter()
                .find(|s| s.id == "microsoft-365")
                .map(|s| s.cidrs.clone())
                .unwrap_or_default(),
            "the sample's ranges are the transcribed set"
        );
    }

    #[test]
    fn bad_json_names_file_line_and_column() {
        let e = ranges(
            "[\n  {\"id\": 11,\n   \"ips\": [\"13.107.64.0/18\",]\n  }\n]",
            "f.json",
            "Skype",
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert_eq!(e, "f.json:3:29: not JSON: trailing comma");
    }

    #[test]
    fn what_is_not_an_endpoints_list() {
        let cases = [
            (
                "{\"a\": 1}",
                "f.json: not an endpoints list: the JSON is not an array",
            ),
            ("[1]", "f.json: element 0 of the list is not an object"),
            (
                "[{\"serviceArea\": \"Skype\"}]",
                "f.json: element 0 has no numeric `id`",
            ),
            (
                "[{\"id\": 11, \"serviceArea\": \"Skype\", \"ips\": [\"10.1.2.3/8\"]}]",
                "f.json: endpoint set 11: `10.1.2.3/8` has host bits set",
            ),
            (
                "[{\"id\": 1, \"serviceArea\": \"Exchange\", \"ips\": [\"10.0.0.0/8\"]}]",
                "f.json: no IP ranges for service area `Skype` (1 endpoint sets read)",
            ),
        ];
        for (json, want) in cases {
            let e = ranges(json, "f.json", "Skype")
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.starts_with(want), "{json}: got `{e}`, want `{want}`");
        }
    }

    #[test]
    fn toml_strings_are_escaped() {
        assert_eq!(toml_string("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000A\"");
    }
}
