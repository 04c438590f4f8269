//! Merge and diff snapshots (BuildKit's MergeSnapshotter on Lamina): a committed
//! snapshot made of other snapshots' changes applied in order, and one holding only the
//! changes between two snapshots, plus the export of such changes as a layer blob.
//!
//! A merge looks exactly as if each diff had been exported as a layer and the layers
//! unpacked in order. On overlayfs, when every diff is one snapshot's own layer over its
//! parent, the merged snapshot just stacks those layer directories (nothing is copied or
//! linked; the sources cannot be removed while it exists). Otherwise the changes are
//! written into a tree of its own, every regular file a hard link to the source's file.

use std::collections::HashSet;

use super::Snapshotter;
use crate::error::{Error, Result};
use crate::layer::materialize::{materialize, Materialized, Target};
use crate::layer::{Compression, DiffReport, DiffSource, LayeredTree};
use crate::meta::{now_nanos, Extra, Record};
use crate::model::{validate_key, validate_labels, Kind, Labels, Usage};
use crate::BackendKind;

/// overlayfs refuses more than 500 lower directories; stacks beyond this many layers
/// are merged with hard links instead (a deep stack also slows every lookup).
const MAX_STACK: usize = 128;

/// One input of a merge: the changes that lead from `lower` ("" = an empty tree) to
/// `upper`. Both are committed snapshots; `upper` need not descend from `lower`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DiffSpec {
    /// Where the changes start ("" = nothing).
    pub lower: String,
    /// Where they lead.
    pub upper: String,
}

impl DiffSpec {
    /// The changes from `lower` to `upper`.
    pub fn new(lower: impl Into<String>, upper: impl Into<String>) -> Self {
        DiffSpec {
            lower: lower.into(),
            upper: upper.into(),
        }
    }
}

/// How a merged snapshot was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MergeMethod {
    /// The sources' layer directories stacked by overlayfs: nothing copied or linked.
    Stacked,
    /// A tree of its own whose files are hard links to the sources' files.
    HardLinked,
}

/// What a merge or diff snapshot took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeReport {
    /// How it was made.
    pub method: MergeMethod,
    /// Changes written into its tree (0 when stacked).
    pub entries: u64,
    /// Its own disk usage: linked files count for the snapshots they came from.
    pub usage: Usage,
}

/// Where one diff's changes come from.
enum Plan {
    /// The upper snapshot's own layer directory (its parent is the lower one).
    Layer { id: u64, dir: std::path::PathBuf },
    /// A comparison of two trees.
    Views {
        lower: Option<LayeredTree>,
        upper: LayeredTree,
    },
}

impl Plan {
    /// Where the changes are read from.
    fn source(&self) -> DiffSource<'_> {
        match self {
            Plan::Layer { dir, .. } => DiffSource::OverlayUpper(dir),
            Plan::Views { lower, upper } => DiffSource::Views {
                lower: lower.as_ref(),
                upper,
            },
        }
    }
}

impl Snapshotter {
    /// A committed snapshot that must exist (merges and diffs read only those).
    fn committed(&self, what: &str, key: &str) -> Result<Record> {
        validate_key(what, key)?;
        let rec = self.meta.get(key)?.ok_or(Error::NotFound {
            key: key.into(),
            context: " (merge or diff source)",
        })?;
        if rec.kind != Kind::Committed {
            return Err(Error::InvalidArgument(format!(
                "{what} {key:?} is a {} snapshot; merges and diffs take committed snapshots",
                rec.kind
            )));
        }
        Ok(rec)
    }

    /// Snapshot `name`'s whole tree, as layers.
    fn tree_of(&self, name: &str, rec: &Record) -> Result<LayeredTree> {
        let layer_form = self.meta.extra(name)?.is_some_and(|e| e.layer_form);
        Ok(match self.backend_kind {
            BackendKind::Overlayfs | BackendKind::Block => LayeredTree::overlay(
                self.meta
                    .chain(name)?
                    .into_iter()
                    .map(|id| self.backend.fs_dir(id))
                    .collect(),
            ),
            BackendKind::Native if layer_form => {
                LayeredTree::overlay(vec![self.backend.fs_dir(rec.id)])
            }
            BackendKind::Native => LayeredTree::plain(self.backend.fs_dir(rec.id)),
        })
    }

    /// The plan of one diff; adds the snapshots it reads (name, id) to `built_on`.
    fn plan(&self, spec: &DiffSpec, built_on: &mut Vec<(String, u64)>) -> Result<Plan> {
        let upper = self.committed("upper", &spec.upper)?;
        built_on.push((spec.upper.clone(), upper.id));
        let lower = if spec.lower.is_empty() {
            None
        } else {
            let lower = self.committed("lower", &spec.lower)?;
            built_on.push((spec.lower.clone(), lower.id));
            Some(lower)
        };
        let extra = self.meta.extra(&spec.upper)?.unwrap_or_default();
        let own_layer = match self.backend_kind {
            BackendKind::Overlayfs | BackendKind::Block => true,
            BackendKind::Native => extra.layer_form,
        };
        if own_layer && extra.stack.is_empty() && upper.parent == spec.lower {
            return Ok(Plan::Layer {
                id: upper.id,
                dir: self.backend.fs_dir(upper.id),
            });
        }
        Ok(Plan::Views {
            lower: lower.map(|l| self.tree_of(&spec.lower, &l)).transpose()?,
            upper: self.tree_of(&spec.upper, &upper)?,
        })
    }

    /// Creates committed snapshot `key` whose contents are `diffs` applied onto one
    /// another in order, starting from an empty tree, exactly as if each had been
    /// exported as a layer and the layers unpacked. Its parent is "": it stands alone.
    pub fn merge(&self, key: &str, diffs: &[DiffSpec], labels: Labels) -> Result<MergeReport> {
        validate_key("key", key)?;
        validate_labels(&labels)?;
        if self.meta.get(key)?.is_some() {
            return Err(Error::AlreadyExists { key: key.into() });
        }
        let mut built_on = Vec::new();
        let plans = diffs
            .iter()
            .map(|d| self.plan(d, &mut built_on))
            .collect::<Result<Vec<_>>>()?;
        let layer_ids: Vec<u64> = plans
            .iter()
            .filter_map(|p| match p {
                Plan::Layer { id, .. } => Some(*id),
                Plan::Views { .. } => None,
            })
            .collect();
        let distinct: HashSet<u64> = layer_ids.iter().copied().collect();
        let stack = self.backend_kind.stacks_layers()
            && layer_ids.len() == plans.len()
            && distinct.len() == layer_ids.len()
            && layer_ids.len() <= MAX_STACK;
        let (extra, target) = if stack {
            let mut sources: Vec<String> = Vec::new();
            for d in diffs {
                if !sources.contains(&d.upper) {
                    sources.push(d.upper.clone());
                }
            }
            let extra = Extra {
                stack: layer_ids.iter().rev().copied().collect(),
                sources,
                layer_form: false,
            };
            (extra, None)
        } else {
            (Extra::default(), Some(Target::FullTree))
        };
        let report = self.derive(key, labels, &plans, target, extra, &built_on)?;
        Ok(MergeReport {
            method: if stack {
                MergeMethod::Stacked
            } else {
                MergeMethod::HardLinked
            },
            ..report
        })
    }

    /// Creates committed snapshot `key` holding only the changes from `lower` ("" = an
    /// empty tree) to `upper`, in overlay layer form (deletions as whiteouts), its files
    /// hard links to `upper`'s. Merging it (`DiffSpec::new("", key)`) applies those
    /// changes, deletions included; exporting it gives the same layer as
    /// [`Snapshotter::export_diff`] of `lower` and `upper`. Preparing a snapshot on top of
    /// it works on overlayfs (the whiteouts hide what they delete); the native backend
    /// refuses, as its copies would show the whiteouts as devices.
    pub fn diff_snapshot(
        &self,
        key: &str,
        lower: &str,
        upper: &str,
        labels: Labels,
    ) -> Result<MergeReport> {
        validate_key("key", key)?;
        validate_labels(&labels)?;
        if self.meta.get(key)?.is_some() {
            return Err(Error::AlreadyExists { key: key.into() });
        }
        let mut built_on = Vec::new();
        let plan = self.plan(&DiffSpec::new(lower, upper), &mut built_on)?;
        let extra = Extra {
            layer_form: true,
            ..Extra::default()
        };
        self.derive(key, labels, &[plan], Some(Target::Layer), extra, &built_on)
    }

    /// Writes the changes from `lower` ("" = an empty tree) to `upper` as an OCI layer.
    pub fn export_diff(
        &self,
        lower: &str,
        upper: &str,
        compression: Compression,
        out: impl std::io::Write,
    ) -> Result<DiffReport> {
        let plan = self.plan(&DiffSpec::new(lower, upper), &mut Vec::new())?;
        Ok(crate::layer::write_diff(plan.source(), compression, out)?)
    }

    /// Whether `key` is a diff snapshot (its tree is a layer of changes).
    pub(crate) fn is_layer_form(&self, key: &str) -> Result<bool> {
        Ok(self.meta.extra(key)?.is_some_and(|e| e.layer_form))
    }

    /// Makes committed snapshot `key` from `plans`: its directory is created, filled
    /// (`target` given) or left empty (stacked), synced, and only then recorded, so a
    /// crash leaves no record without its tree. `built_on` (name, id) are the snapshots
    /// the plans read: one removed meanwhile makes this NotFound (the record is only
    /// written if all are still the ones read).
    fn derive(
        &self,
        key: &str,
        labels: Labels,
        plans: &[Plan],
        target: Option<Target>,
        extra: Extra,
        built_on: &[(String, u64)],
    ) -> Result<MergeReport> {
        if target.is_some() && self.backend_kind == BackendKind::Block {
            // A materialised tree is made of hard links to the sources' files, and the
            // block backend's layers live in separate read-only EROFS images.
            return Err(Error::FailedPrecondition(
                "the block backend merges only by stacking layers (each diff one layer over \
                 its parent); hard-link merges and diff snapshots need the overlayfs backend"
                    .into(),
            ));
        }
        let guard = self.allocate_id();
        let id = guard.id;
        let fs = self.backend.fs_dir(id);
        let built = (|| -> Result<(u64, Usage)> {
            self.backend.create(id, Kind::Committed, &[])?;
            let Some(target) = target else {
                return Ok((0, self.backend.usage(id)?));
            };
            let mut done = Materialized::default();
            for plan in plans {
                let changes = crate::layer::diff::changes(plan.source())?;
                materialize(changes, &fs, target, &mut done)?;
            }
            let usage = crate::layer::materialize::own_usage(&fs, &done)?;
            Ok((done.entries, usage))
        })();
        let (entries, usage) = match built.and_then(|b| crate::sys::syncfs(&self.root).map(|()| b))
        {
            Ok(b) => b,
            Err(e) => {
                self.discard(id);
                return Err(self.vanished(built_on).unwrap_or(e));
            }
        };
        let now = now_nanos();
        let rec = Record {
            id,
            kind: Kind::Committed,
            parent: String::new(),
            labels,
            created: now,
            updated: now,
            usage: Some(usage),
        };
        if let Err(e) = self.meta.insert_derived(key, &rec, &extra, built_on) {
            self.discard(id);
            return Err(e);
        }
        drop(guard);
        Ok(MergeReport {
            method: MergeMethod::HardLinked,
            entries,
            usage,
        })
    }
}
