//! Reserving and activating a group of certificates in a few statements (arrays through
//! `unnest`), not one round trip per certificate, with the semantics of doing it one by one.
//!
//! Reserve: the tenants' counter rows are locked, the ids the group considers are looked up
//! in one query, the ids planned in memory exactly as the one-by-one walk would hand them
//! out, then claimed with one `INSERT ... ON CONFLICT DO NOTHING RETURNING` under a
//! savepoint. Another station may claim one of those ids between the look-up and the claim
//! (an explicit id; the counter row keeps other stations off the tenant's next ids): the
//! claim comes back short, the savepoint is rolled back, and the plan is made again knowing
//! that id taken. Then one INSERT for the renewals and one for the certificates.
//!
//! Activate: one UPDATE supersedes the devices' active certificates, one activates the
//! group's reservations; a group naming a device or serial twice is done one by one.

use std::collections::{HashMap, HashSet};

use postgres::Transaction;

use super::{lock_counter, pg_err, Ctx, MAX_SKIP};
use crate::error::{Busy, Conflict, Error};
use crate::registry::{now, Activation, DeviceId, Reservation};

/// How often a reservation is planned again after another station took one of its ids.
const MAX_PLANS: usize = 8;

/// What this transaction knows of which device ids exist (looked up in bulk).
#[derive(Default)]
struct Known {
    looked_up: HashSet<String>,
    taken: HashSet<String>,
}

impl Known {
    fn look_up(
        &mut self,
        tx: &mut Transaction<'_>,
        ctx: &Ctx<'_>,
        ids: impl IntoIterator<Item = String>,
    ) -> Result<(), Error> {
        let ids: Vec<String> = ids
            .into_iter()
            .filter(|id| !self.looked_up.contains(id))
            .collect();
        if ids.is_empty() {
            return Ok(());
        }
        let rows = tx
            .query(
                "SELECT device_id FROM devices WHERE device_id = ANY($1)",
                &[&ids],
            )
            .map_err(pg_err(ctx.at))?;
        self.taken
            .extend(rows.iter().map(|r| r.get::<_, String>(0)));
        self.looked_up.extend(ids);
        Ok(())
    }
}

fn numbered(tenant: &str, n: i64) -> String {
    format!("{tenant}-{n:06}")
}

/// The ids of a group, planned as the one-by-one walk hands them out, and each tenant's
/// counter after it.
struct Plan {
    ids: Vec<String>,
    counters: HashMap<String, i64>,
}

/// Plans the group's ids. `counters` holds the locked counter value of each tenant seen
/// so far (locked here at first use).
fn plan(
    tx: &mut Transaction<'_>,
    ctx: &Ctx<'_>,
    items: &[Reservation],
    counters: &mut HashMap<String, i64>,
    known: &mut Known,
) -> Result<Plan, Error> {
    let ahead = items.len() as i64 + 16;
    let mut next: HashMap<String, i64> = HashMap::new();
    let mut claimed: HashSet<String> = HashSet::new();
    let mut ids = Vec::with_capacity(items.len());
    for item in items {
        let id = match &item.device {
            DeviceId::Next => {
                let tenant = &item.tenant;
                if !counters.contains_key(tenant) {
                    let locked = lock_counter(tx, ctx, tenant)?;
                    counters.insert(tenant.clone(), locked);
                }
                let n = next
                    .entry(tenant.clone())
                    .or_insert_with(|| counters.get(tenant).copied().unwrap_or(1));
                next_free(tx, ctx, tenant, n, ahead, &claimed, known)?
            }
            DeviceId::New(id) => {
                if known.taken.contains(id) || claimed.contains(id) {
                    return Err(Error::DuplicateDevice(id.clone()));
                }
                id.clone()
            }
            DeviceId::Existing(id) => {
                if !(known.taken.contains(id) || claimed.contains(id)) {
                    return Err(Error::UnknownDevice(id.clone()));
                }
                ids.push(id.clone());
                continue;
            }
        };
        claimed.insert(id.clone());
        ids.push(id);
    }
    Ok(Plan {
        ids,
        counters: next,
    })
}

/// The tenant's first free id from number `n` on (skipping ids given explicitly); moves
/// `n` past it.
fn next_free(
    tx: &mut Transaction<'_>,
    ctx: &Ctx<'_>,
    tenant: &str,
    n: &mut i64,
    ahead: i64,
    claimed: &HashSet<String>,
    known: &mut Known,
) -> Result<String, Error> {
    let from = *n;
    for _ in 0..MAX_SKIP {
        let id = numbered(tenant, *n);
        if !known.looked_up.contains(&id) {
            let range = (*n..*n + ahead).map(|k| numbered(tenant, k));
            known.look_up(tx, ctx, range)?;
        }
        *n += 1;
        if !known.taken.contains(&id) && !claimed.contains(&id) {
            return Ok(id);
        }
    }
    Err(Error::InvalidInput {
        field: "tenant",
        message: format!("{tenant}: the {MAX_SKIP} ids after number {from} are all taken"),
    })
}

/// Claims the planned new devices in one statement under a savepoint; returns the ids
/// another station took meanwhile (nothing claimed then).
fn claim(
    tx: &mut Transaction<'_>,
    ctx: &Ctx<'_>,
    items: &[Reservation],
    ids: &[String],
) -> Result<Vec<String>, Error> {
    let err = pg_err(ctx.at);
    let (new, tenants): (Vec<&String>, Vec<&str>) = items
        .iter()
        .zip(ids)
        .filter(|(item, _)| !matches!(item.device, DeviceId::Existing(_)))
        .map(|(item, id)| (id, item.tenant.as_str()))
        .unzip();
    if new.is_empty() {
        return Ok(Vec::new());
    }
    let mut sp = tx.transaction().map_err(&err)?;
    let rows = sp
        .query(
            "INSERT INTO devices (device_id, tenant, station, created_at)
             SELECT d, t, $3, $4 FROM unnest($1::text[], $2::text[]) AS u(d, t)
             ON CONFLICT (device_id) DO NOTHING RETURNING device_id",
            &[&new, &tenants, &ctx.me.station, &now()],
        )
        .map_err(&err)?;
    if rows.len() == new.len() {
        sp.commit().map_err(&err)?;
        return Ok(Vec::new());
    }
    let got: HashSet<String> = rows.iter().map(|r| r.get(0)).collect();
    sp.rollback().map_err(&err)?;
    Ok(new
        .into_iter()
        .filter(|id| !got.contains(*id))
        .cloned()
        .collect())
}

pub(super) fn reserve_in(
    tx: &mut Transaction<'_>,
    ctx: &Ctx<'_>,
    items: &[Reservation],
) -> Result<Vec<String>, Error> {
    if items.is_empty() {
        return Ok(Vec::new());
    }
    let err = pg_err(ctx.at);
    let mut known = Known::default();
    let explicit = items.iter().filter_map(|i| match &i.device {
        DeviceId::New(id) | DeviceId::Existing(id) => Some(id.clone()),
        DeviceId::Next => None,
    });
    known.look_up(tx, ctx, explicit)?;
    let mut counters = HashMap::new();
    let mut planned = None;
    for _ in 0..MAX_PLANS {
        let p = plan(tx, ctx, items, &mut counters, &mut known)?;
        let lost = claim(tx, ctx, items, &p.ids)?;
        if lost.is_empty() {
            planned = Some(p);
            break;
        }
        // An explicit id claimed elsewhere is a duplicate, as one by one; a next id is
        // skipped in the next plan.
        for item in items {
            if let DeviceId::New(id) = &item.device {
                if lost.contains(id) {
                    return Err(Error::DuplicateDevice(id.clone()));
                }
            }
        }
        known.taken.extend(lost);
    }
    let Some(Plan {
        ids,
        counters: next,
    }) = planned
    else {
        return Err(Error::Busy(Busy::SharedRegistry {
            at: ctx.at.to_owned(),
        }));
    };
    let created = now();
    let (renewed, devices): (Vec<&str>, Vec<&String>) = items
        .iter()
        .zip(&ids)
        .filter(|(item, _)| matches!(item.device, DeviceId::Existing(_)))
        .map(|(item, id)| (item.serial_hex.as_str(), id))
        .unzip();
    if !renewed.is_empty() {
        // Counted for the renewal rate in the same transaction as the reservation.
        tx.execute(
            "INSERT INTO renewals (serial, device_id, at)
             SELECT s, d, $3 FROM unnest($1::text[], $2::text[]) AS u(s, d)",
            &[&renewed, &devices, &created],
        )
        .map_err(&err)?;
    }
    let serials: Vec<&str> = items.iter().map(|i| i.serial_hex.as_str()).collect();
    let tenants: Vec<&str> = items.iter().map(|i| i.tenant.as_str()).collect();
    let batches: Vec<&str> = items.iter().map(|i| i.batch.as_str()).collect();
    tx.execute(
        "INSERT INTO certs (serial, issuer, station, device_id, tenant, status, batch, created_at)
         SELECT s, $1, $2, d, t, 'reserved', b, $3
         FROM unnest($4::text[], $5::text[], $6::text[], $7::text[]) AS u(s, d, t, b)",
        &[
            &ctx.me.issuer,
            &ctx.me.station,
            &created,
            &serials,
            &ids,
            &tenants,
            &batches,
        ],
    )
    .map_err(&err)?;
    for (tenant, n) in &next {
        tx.execute(
            "UPDATE counters SET next = $2 WHERE tenant = $1",
            &[tenant, n],
        )
        .map_err(&err)?;
    }
    Ok(ids)
}

fn has_repeats<'a>(mut keys: impl Iterator<Item = &'a str>) -> bool {
    let mut seen = HashSet::new();
    keys.any(|k| !seen.insert(k))
}

pub(super) fn activate_in(
    tx: &mut Transaction<'_>,
    ctx: &Ctx<'_>,
    items: &[Activation],
) -> Result<(), Error> {
    if has_repeats(items.iter().map(|a| a.device_id.as_str()))
        || has_repeats(items.iter().map(|a| a.serial_hex.as_str()))
    {
        return activate_each(tx, ctx, items);
    }
    let err = pg_err(ctx.at);
    let devices: Vec<&str> = items.iter().map(|a| a.device_id.as_str()).collect();
    tx.execute(
        "UPDATE certs SET status = 'superseded', superseded_at = $2
         WHERE device_id = ANY($1) AND status = 'active'",
        &[&devices, &now()],
    )
    .map_err(&err)?;
    let serials: Vec<&str> = items.iter().map(|a| a.serial_hex.as_str()).collect();
    let fingerprints: Vec<&str> = items.iter().map(|a| a.fingerprint_hex.as_str()).collect();
    let not_after: Vec<i64> = items.iter().map(|a| a.not_after).collect();
    let ders: Vec<&[u8]> = items.iter().map(|a| a.cert_der.as_slice()).collect();
    let rows = tx
        .query(
            "UPDATE certs AS c SET status = 'active', fingerprint = u.f, not_after = u.n,
                 cert_der = u.der
             FROM unnest($1::text[], $2::text[], $3::int8[], $4::bytea[], $5::text[])
                 AS u(s, f, n, der, d)
             WHERE c.serial = u.s AND c.device_id = u.d AND c.station = $6
                 AND c.status = 'reserved'
             RETURNING c.serial",
            &[
                &serials,
                &fingerprints,
                &not_after,
                &ders,
                &devices,
                &ctx.me.station,
            ],
        )
        .map_err(&err)?;
    if rows.len() == items.len() {
        return Ok(());
    }
    let done: HashSet<String> = rows.iter().map(|r| r.get(0)).collect();
    let missing = serials
        .iter()
        .find(|s| !done.contains(**s))
        .map_or_else(String::new, |s| (*s).to_owned());
    Err(Conflict::NotReserved {
        serial_hex: missing,
    }
    .into())
}

/// One by one, for a group that activates two certificates of one device (the later one
/// supersedes the earlier) or names a serial twice (the second is not reserved any more).
fn activate_each(
    tx: &mut Transaction<'_>,
    ctx: &Ctx<'_>,
    items: &[Activation],
) -> Result<(), Error> {
    let err = pg_err(ctx.at);
    let at = now();
    for a in items {
        tx.execute(
            "UPDATE certs SET status = 'superseded', superseded_at = $2
             WHERE device_id = $1 AND status = 'active'",
            &[&a.device_id, &at],
        )
        .map_err(&err)?;
        let changed = tx
            .execute(
                "UPDATE certs SET status = 'active', fingerprint = $2, not_after = $3,
                     cert_der = $4
                 WHERE serial = $1 AND device_id = $5 AND station = $6 AND status = 'reserved'",
                &[
                    &a.serial_hex,
                    &a.fingerprint_hex,
                    &a.not_after,
                    &a.cert_der,
                    &a.device_id,
                    &ctx.me.station,
                ],
            )
            .map_err(&err)?;
        if changed != 1 {
            return Err(Conflict::NotReserved {
                serial_hex: a.serial_hex.clone(),
            }
            .into());
        }
    }
    Ok(())
}
