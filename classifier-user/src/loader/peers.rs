//! The `PEERS` trie: the address sets of the rules that name one, written
//! per generation like the port tables.
//!
//! An install writes the generation the packet path does not read: it
//! removes that generation's entries the policy no longer has (left from
//! the install before last) and inserts the new ones, all before the flip.
//! The generation in force keeps its entries until the install after next
//! rewrites it, so a packet that read the old generation just before the
//! flip still finds its rule's sets: a reload that changes a set loses no
//! packet of a peer in both the old and the new set.

use std::collections::BTreeMap;

use aya::maps::{LpmTrie, MapData, lpm_trie::Key};
use classifier_common::{PEER_SCOPE_BITS, PeerAddr, map_names, peer_scope};

use super::{Classifier, LoadError, map_err};
use crate::policy::CompiledPolicy;

impl Classifier {
    fn peers(&mut self) -> Result<LpmTrie<&mut MapData, PeerAddr, u32>, LoadError> {
        let map = self
            .ebpf
            .map_mut(map_names::PEERS)
            .ok_or(LoadError::Missing("PEERS"))?;
        LpmTrie::try_from(map).map_err(map_err(map_names::PEERS))
    }

    /// Makes `generation`'s entries exactly `policy`'s.
    pub(super) fn write_peers(
        &mut self,
        policy: &CompiledPolicy,
        generation: u32,
    ) -> Result<(), LoadError> {
        let wanted: BTreeMap<(u32, [u8; 4], [u8; 16]), u32> = policy
            .peers
            .iter()
            .flat_map(|(&slot, entries)| {
                entries.iter().map(move |(p, admitted)| {
                    (
                        (
                            PEER_SCOPE_BITS + u32::from(p.len),
                            peer_scope(generation, slot),
                            p.addr,
                        ),
                        u32::from(*admitted),
                    )
                })
            })
            .collect();
        let mut trie = self.peers()?;
        let stale: Vec<Key<PeerAddr>> = trie
            .keys()
            .filter_map(Result::ok)
            .filter(|k| {
                let data = k.data();
                u32::from_be_bytes(data.scope) >> 16 == generation
                    && !wanted.contains_key(&(k.prefix_len(), data.scope, data.addr))
            })
            .collect();
        for key in stale {
            trie.remove(&key).map_err(map_err(map_names::PEERS))?;
        }
        for ((len, scope, addr), admitted) in wanted {
            trie.insert(&Key::new(len, PeerAddr { scope, addr }), admitted, 0)
                .map_err(map_err(map_names::PEERS))?;
        }
        Ok(())
    }
}
