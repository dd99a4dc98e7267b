//! `cluster.json`: ties the repository to one PostgreSQL system identifier. Written once, by
//! the first writer that knows the identifier; WAL or backups of another system are refused.

use anyhow::{bail, Context};
use pitr_store::{layout, DocWrite, Repo};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct ClusterDoc {
    #[serde(with = "super::u64_string::opt")]
    system_identifier: Option<u64>,
}

/// Check that `sysid` is the repository's cluster, recording it if the repository has none yet.
pub async fn claim_cluster(repo: &Repo, sysid: u64, what: &str) -> anyhow::Result<()> {
    let body = serde_json::to_vec_pretty(&ClusterDoc {
        system_identifier: Some(sysid),
    })
    .expect("serializes");
    let existing = match repo.get_doc(layout::CLUSTER).await? {
        Some(b) => b,
        None => match repo.put_doc(layout::CLUSTER, body.into()).await? {
            DocWrite::Created => return Ok(()),
            DocWrite::Exists(b) => b,
        },
    };
    let doc: ClusterDoc =
        serde_json::from_slice(&existing).with_context(|| format!("parse {}", layout::CLUSTER))?;
    match doc.system_identifier {
        Some(theirs) if theirs != sysid => bail!(
            "{what} comes from database system {sysid}, but repository {} belongs to system {theirs}",
            repo.url()
        ),
        _ => Ok(()),
    }
}

/// The repository's cluster, if one has been recorded.
pub async fn repo_system_identifier(repo: &Repo) -> anyhow::Result<Option<u64>> {
    let Some(body) = repo.get_doc(layout::CLUSTER).await? else {
        return Ok(None);
    };
    let doc: ClusterDoc =
        serde_json::from_slice(&body).with_context(|| format!("parse {}", layout::CLUSTER))?;
    Ok(doc.system_identifier)
}
