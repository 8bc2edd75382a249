//! Damage is detected, not silently accepted: per-tree record counts kept in the
//! same transactions, checked at start-up, and a marker file beside sled's files
//! that remembers how far the store's history reached.
use super::*;

#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Marker {
    pub(super) store_id: String,
    pub(super) epoch: i64,
}

pub(super) fn write_marker_file(dir: &Path, m: &Marker) -> std::io::Result<()> {
    let tmp = dir.join(format!("{MARKER_FILE}.tmp"));
    std::fs::write(&tmp, serde_json::to_vec(m).unwrap_or_default())?;
    std::fs::rename(tmp, dir.join(MARKER_FILE))
}

impl Store {
    pub(super) fn marker_path(&self) -> PathBuf {
        self.inner.path.join(MARKER_FILE)
    }

    /// Verifies checksums and counts, and the marker; initialises a new store and
    /// seals one written before checksums existed. Returns the marker contents.
    pub(super) fn check_integrity(&self) -> Result<Marker, StoreError> {
        let s = &self.inner;
        let damaged = |message: String| StoreError::Damaged {
            path: s.path.clone(),
            message,
        };
        let marker: Option<Marker> = match std::fs::read(self.marker_path()) {
            Ok(b) => Some(serde_json::from_slice(&b).map_err(|e| {
                damaged(format!("its marker file {MARKER_FILE} is unreadable ({e})"))
            })?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(damaged(format!("cannot read {MARKER_FILE}: {e}"))),
        };
        let store_id = s.meta.get(META_STORE_ID).map_err(|e| self.eng(e))?;
        let epoch = read_i64(s.meta.get(META_EPOCH).map_err(|e| self.eng(e))?);
        let store_id = match store_id {
            Some(id) => String::from_utf8_lossy(&id).into_owned(),
            None => {
                if let Some(m) = &marker {
                    return Err(damaged(format!(
                        "its data file holds nothing of store {} (emptied, truncated or overwritten)",
                        m.store_id
                    )));
                }
                // New, or written by a version without checksums: seal and count it.
                self.seal()?
            }
        };
        if let Some(m) = &marker {
            if m.store_id != store_id {
                return Err(damaged(format!(
                    "its data file belongs to store {store_id}, its marker to store {}",
                    m.store_id
                )));
            }
            if m.epoch > epoch {
                return Err(damaged(format!(
                    "its data file was rolled back (sync epoch {epoch}, but {} was reached before): records written since are lost",
                    m.epoch
                )));
            }
        }
        let counts = self.walk_checked()?;
        for c in Counted::ALL {
            let kept = read_i64(s.meta.get(c.meta_key()).map_err(|e| self.eng(e))?);
            let found = counts[c.idx()];
            if kept != found {
                return Err(damaged(format!(
                    "tree {} holds {found} records but {kept} were written",
                    c.tree()
                )));
            }
            s.counts[c.idx()].store(found, Ordering::Relaxed);
        }
        let marker = Marker { store_id, epoch };
        self.write_marker(&marker)
            .map_err(|e| damaged(format!("cannot write {MARKER_FILE}: {e}")))?;
        Ok(marker)
    }

    /// Gives a store without a `store_id` one: checksums its values (a store from an
    /// earlier version holds plain JSON) and writes its counts.
    pub(super) fn seal(&self) -> Result<String, StoreError> {
        let s = &self.inner;
        let mut counts = [0i64; 4];
        for (tree, name, counted) in self.json_trees() {
            let mut batch = sled::Batch::default();
            for kv in tree.iter() {
                let (k, v) = kv.map_err(|e| self.eng(e))?;
                let value: serde_json::Value = if checked(&v).is_ok() {
                    continue;
                } else {
                    serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt {
                        path: s.path.clone(),
                        tree: name,
                        message: e.to_string(),
                    })?
                };
                batch.insert(k, enc(&value));
            }
            tree.apply_batch(batch).map_err(|e| self.eng(e))?;
            if let Some(c) = counted {
                counts[c.idx()] = tree.len() as i64;
            }
        }
        let id = uuid::Uuid::new_v4().to_string();
        let mut batch = sled::Batch::default();
        for c in Counted::ALL {
            batch.insert(c.meta_key(), &counts[c.idx()].to_be_bytes());
        }
        batch.insert(META_EPOCH, &0i64.to_be_bytes());
        // Last: a crash before this leaves a store that is sealed again next time.
        batch.insert(META_STORE_ID, id.as_bytes());
        s.meta.apply_batch(batch).map_err(|e| self.eng(e))?;
        s.db.flush().map_err(|e| self.eng(e))?;
        Ok(id)
    }

    pub(super) fn json_trees(&self) -> [(&sled::Tree, &'static str, Option<Counted>); 9] {
        let s = &self.inner;
        [
            (&s.subs, "subscriptions", Some(Counted::Subscriptions)),
            (&s.jobs, "jobs", Some(Counted::Jobs)),
            (&s.outbox, "outbox", Some(Counted::Outbox)),
            (&s.dead, "dead_letters", Some(Counted::DeadLetters)),
            (&s.channels, "channels", None),
            (&s.discovery, "discovery", None),
            (&s.watches, "watches", None),
            (&s.notices, "notices", None),
            (&s.anchors, "anchors", None),
        ]
    }

    /// Checks every value's checksum (in parallel: every tree cut into parts that
    /// all cores take in turn, so one large tree does not leave cores idle);
    /// returns counts.
    pub(super) fn walk_checked(&self) -> Result<[i64; 4], StoreError> {
        let mut work = Vec::new();
        for (tree, name, counted) in self.json_trees() {
            for r in split::ranges(tree, split::PARTS).map_err(|e| self.eng(e))? {
                work.push((tree, name, counted, r));
            }
        }
        let results = split::in_parallel(work, walk_threads(), |(tree, name, counted, r)| {
            let mut n = 0i64;
            for v in tree.range(r).values() {
                let v = v.map_err(|e| self.eng(e))?;
                checked(&v).map_err(|message| StoreError::Corrupt {
                    path: self.inner.path.clone(),
                    tree: name,
                    message,
                })?;
                n += 1;
            }
            Ok::<_, StoreError>((counted, n))
        });
        let mut counts = [0i64; 4];
        for r in results {
            if let (Some(c), n) = r? {
                counts[c.idx()] += n;
            }
        }
        Ok(counts)
    }

    pub(super) fn write_marker(&self, m: &Marker) -> std::io::Result<()> {
        write_marker_file(&self.inner.path, m)
    }

    /// Reads and decodes every record of every tree; an error names the tree.
    pub fn verify(&self) -> Result<StoreCounts, StoreError> {
        let s = &self.inner;
        let subscriptions = self.subscriptions()?.len();
        let jobs = self.job_states()?.len();
        let mut outbox = 0;
        for v in s.outbox.iter().values() {
            let _: OutboxEntry = self.dec("outbox", &v.map_err(|e| self.eng(e))?)?;
            outbox += 1;
        }
        let dead_letters = self.dead_letters()?.len();
        for v in s.channels.iter().values() {
            let _: ChannelState = self.dec("channels", &v.map_err(|e| self.eng(e))?)?;
        }
        let mut delivered_log = 0;
        for kv in s.sent.iter() {
            kv.map_err(|e| self.eng(e))?;
            delivered_log += 1;
        }
        Ok(StoreCounts {
            subscriptions,
            jobs,
            outbox,
            dead_letters,
            delivered_log,
        })
    }
}
