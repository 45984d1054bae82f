//! The signed sales, and the little the hot paths need of each kept beside them.
//!
//! Without a state file the sales are held in memory, as before. With one, a sale is held
//! only until its record is written (the operation that signed or changed it), and read back
//! from the file when a lookup needs all of it: `selectInvoiceDetails`, credit-note checks,
//! purchase lists, the VSCU sync, receipt verification and the dump. What signing, day
//! reports and the scans need is an index kept in memory in both cases, at a small fixed
//! cost per device and day rather than per sale:
//!
//! - the invoice numbers signed per device, as runs (one run when numbering is strict);
//! - running day-report totals per device and day (what `checkReportZ` reads);
//! - the credit notes of each original invoice, the sales of each buyer PIN (with when they
//!   were signed), and the keys of the sales KRA has not received yet (VSCU offline).

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::Arc;

use chrono::{NaiveDate, NaiveDateTime};
use rusqlite::{Connection, OptionalExtension};
use serde::ser::{Error as _, SerializeMap};
use ushuru_kra::types::ReportCategory;
use ushuru_kra::wire::Amount;
use ushuru_tax::Money;

use crate::state::{ReceiptType, SignedSale, sale_key};

/// A stored sale that could not be read back from the state file.
#[derive(Debug, thiserror::Error)]
pub enum SaleReadError {
    #[error("state file: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("the state file's sale {key} does not read back: {source}")]
    Corrupt {
        key: String,
        source: serde_json::Error,
    },
}

/// The day-report categories of one device and day, by the label's first letter.
pub type DayTotals = BTreeMap<char, ReportCategory>;

/// The signed sales (see the module's documentation).
pub struct Sales {
    backing: Backing,
    devices: BTreeMap<Arc<str>, DeviceSales>,
    /// Sales with a buyer PIN, by that PIN.
    buyers: BTreeMap<Box<str>, Vec<Bought>>,
    /// The keys of the sales KRA has not received (VSCU, link cut).
    unsynced: BTreeSet<String>,
    count: usize,
}

enum Backing {
    Memory {
        /// Boxed: the map's nodes hold eleven slots and, filled in key order, about six are
        /// in use; a box keeps the empty slots small.
        sales: BTreeMap<String, Box<SignedSale>>,
        /// The names the sales share (tin, branch, sdcId, mrcNo, label).
        names: BTreeSet<Arc<str>>,
    },
    File {
        /// A connection of its own to the state file, for reading only.
        reader: Connection,
        /// Sales changed by the operation under way, until the state file has them.
        pending: BTreeMap<String, Box<SignedSale>>,
    },
}

#[derive(Default)]
struct DeviceSales {
    /// Invoice numbers signed: runs, first → last.
    numbers: BTreeMap<u64, u64>,
    days: BTreeMap<NaiveDate, DayTotals>,
    /// Credit notes by the invoice they reverse.
    notes: BTreeMap<u64, Vec<u64>>,
}

struct Bought {
    device: Arc<str>,
    invc_no: u64,
    signed: NaiveDateTime,
}

impl Default for Sales {
    fn default() -> Self {
        Sales::with_backing(Backing::Memory {
            sales: BTreeMap::new(),
            names: BTreeSet::new(),
        })
    }
}

impl std::fmt::Debug for Sales {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sales")
            .field("in_file", &matches!(self.backing, Backing::File { .. }))
            .field("count", &self.count)
            .finish_non_exhaustive()
    }
}

/// The device key (`tin/bhfId`) and invoice number of a sale key.
fn split_key(key: &str) -> Option<(&str, u64)> {
    let (device, number) = key.rsplit_once('/')?;
    Some((device, number.parse().ok()?))
}

impl DeviceSales {
    fn contains(&self, invc_no: u64) -> bool {
        self.numbers
            .range(..=invc_no)
            .next_back()
            .is_some_and(|(_, last)| *last >= invc_no)
    }

    /// Adds a number not yet signed, joining the runs it touches.
    fn add_number(&mut self, invc_no: u64) {
        let before = self
            .numbers
            .range(..invc_no)
            .next_back()
            .filter(|(_, last)| last.checked_add(1) == Some(invc_no))
            .map(|(first, _)| *first);
        let after = invc_no
            .checked_add(1)
            .and_then(|next| self.numbers.remove(&next));
        let first = before.unwrap_or(invc_no);
        self.numbers.insert(first, after.unwrap_or(invc_no));
    }
}

/// Counts a sale into its day-report category.
fn add_to_day(category: &mut ReportCategory, sale: &SignedSale) {
    let number = sale.receipt.tot_rcpt_no;
    category.opening_rcpt_no = Some(category.opening_rcpt_no.map_or(number, |n| n.min(number)));
    category.closing_rcpt_no = Some(category.closing_rcpt_no.map_or(number, |n| n.max(number)));
    let add = |sum: &mut Amount, amount: Amount| {
        *sum = Amount(sum.0.checked_add(amount.0).unwrap_or(Money::ZERO));
    };
    let summary = sale.summary();
    if summary.rcpt_ty == ReceiptType::CreditNote {
        category.refund_cnt.0 += 1;
        add(&mut category.refund_amt, summary.tot_amt);
        add(&mut category.refund_tax_amt, summary.tot_tax_amt);
    } else {
        category.sale_cnt.0 += 1;
        add(&mut category.sale_amt, summary.tot_amt);
        add(&mut category.sale_tax_amt, summary.tot_tax_amt);
    }
}

const READ_SALE: &str = "SELECT value FROM records WHERE kind = 'sale' AND key = ?1";

impl Sales {
    fn with_backing(backing: Backing) -> Self {
        Sales {
            backing,
            devices: BTreeMap::new(),
            buyers: BTreeMap::new(),
            unsynced: BTreeSet::new(),
            count: 0,
        }
    }

    /// Sales kept in the state file `reader` is connected to, read back as needed.
    pub fn in_file(reader: Connection) -> Self {
        Sales::with_backing(Backing::File {
            reader,
            pending: BTreeMap::new(),
        })
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// How many sales are held in memory in full: all of them without a state file, with
    /// one only those the operation under way changed (none between operations).
    pub fn held(&self) -> usize {
        match &self.backing {
            Backing::Memory { sales, .. } => sales.len(),
            Backing::File { pending, .. } => pending.len(),
        }
    }

    /// Adds a sale signed now: kept until [`Sales::flush`] when backed by a file.
    pub fn insert(&mut self, key: String, mut sale: Box<SignedSale>) {
        self.index(&key, &sale);
        match &mut self.backing {
            Backing::Memory { sales, names } => {
                sale.share_names(names);
                sales.insert(key, sale);
            }
            Backing::File { pending, .. } => {
                pending.insert(key, sale);
            }
        }
    }

    /// Adds a sale read from the state file (with a file, only its index is kept).
    pub fn restore(&mut self, key: String, sale: Box<SignedSale>) {
        if let Backing::File { .. } = self.backing {
            self.index(&key, &sale);
        } else {
            self.insert(key, sale);
        }
    }

    fn index(&mut self, key: &str, sale: &SignedSale) {
        if !sale.synced {
            self.unsynced.insert(key.to_owned());
        }
        let Some((device_key, invc_no)) = split_key(key) else {
            tracing::warn!(key, "a sale's key does not end in its invoice number");
            return;
        };
        let device_key: Arc<str> = match self.devices.get_key_value(device_key) {
            Some((shared, _)) => Arc::clone(shared),
            None => Arc::from(device_key),
        };
        let device = self.devices.entry(Arc::clone(&device_key)).or_default();
        if device.contains(invc_no) {
            // Replacing a sale (never done: numbers are signed once) keeps the first's totals.
            return;
        }
        self.count += 1;
        device.add_number(invc_no);
        let day = device
            .days
            .entry(sale.receipt.sdc_date_time.0.date())
            .or_default();
        add_to_day(
            day.entry(sale.label.chars().next().unwrap_or('N'))
                .or_default(),
            sale,
        );
        let summary = sale.summary();
        if summary.rcpt_ty == ReceiptType::CreditNote {
            device
                .notes
                .entry(summary.org_invc_no)
                .or_default()
                .push(invc_no);
        }
        if let Some(buyer) = summary.cust_tin.as_deref().filter(|t| !t.is_empty()) {
            let bought = Bought {
                device: device_key,
                invc_no,
                signed: sale.receipt.sdc_date_time.0,
            };
            match self.buyers.get_mut(buyer) {
                Some(sales) => sales.push(bought),
                None => {
                    self.buyers.insert(buyer.into(), vec![bought]);
                }
            }
        }
    }

    /// Whether the device (`tin/bhfId`) signed invoice `invc_no`.
    pub fn contains(&self, device_key: &str, invc_no: u64) -> bool {
        self.devices
            .get(device_key)
            .is_some_and(|d| d.contains(invc_no))
    }

    /// A sale in full, from memory or the state file.
    pub fn get(&self, key: &str) -> Result<Option<Cow<'_, SignedSale>>, SaleReadError> {
        match &self.backing {
            Backing::Memory { sales, .. } => Ok(sales.get(key).map(|s| Cow::Borrowed(&**s))),
            Backing::File { reader, pending } => {
                if let Some(sale) = pending.get(key) {
                    return Ok(Some(Cow::Borrowed(&**sale)));
                }
                let Some(json) = read_json(reader, key)? else {
                    return Ok(None);
                };
                let sale =
                    serde_json::from_str(&json).map_err(|source| SaleReadError::Corrupt {
                        key: key.to_owned(),
                        source,
                    })?;
                Ok(Some(Cow::Owned(sale)))
            }
        }
    }

    /// The sale's record as the state file is to hold it; `None` when there is none.
    pub fn record(&self, key: &str) -> Option<Result<String, serde_json::Error>> {
        match &self.backing {
            Backing::Memory { sales, .. } => sales.get(key).map(serde_json::to_string),
            Backing::File { reader, pending } => match pending.get(key) {
                Some(sale) => Some(serde_json::to_string(sale)),
                // Not changed by this operation: the file has it as it is.
                None => read_json(reader, key)
                    .map_err(serde_json::Error::custom)
                    .transpose(),
            },
        }
    }

    /// Forgets the sales the state file now holds (a no-op in memory).
    pub fn flush(&mut self) {
        if let Backing::File { pending, .. } = &mut self.backing {
            pending.clear();
        }
    }

    /// The day-report totals of a device (`tin/bhfId`) and day so far.
    pub fn day(&self, device_key: &str, day: NaiveDate) -> Option<&DayTotals> {
        self.devices.get(device_key)?.days.get(&day)
    }

    /// The first day with receipts of a device strictly between `after` and `before`.
    pub fn first_day_between(
        &self,
        device_key: &str,
        after: Option<NaiveDate>,
        before: NaiveDate,
    ) -> Option<NaiveDate> {
        let days = &self.devices.get(device_key)?.days;
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        if after.is_some_and(|after| after >= before) {
            return None;
        }
        days.range((start, Bound::Excluded(before)))
            .next()
            .map(|(day, _)| *day)
    }

    /// The invoice numbers of the device's credit notes against invoice `original`.
    pub fn credit_notes(&self, device_key: &str, original: u64) -> &[u64] {
        self.devices
            .get(device_key)
            .and_then(|d| d.notes.get(&original))
            .map_or(&[], Vec::as_slice)
    }

    /// The keys, in order, of the sales to `buyer` signed after `since`.
    pub fn bought_by(&self, buyer: &str, since: NaiveDateTime) -> Vec<String> {
        let mut keys: Vec<String> = self
            .buyers
            .get(buyer)
            .into_iter()
            .flatten()
            .filter(|b| b.signed > since)
            .map(|b| {
                let (tin, bhf_id) = b.device.split_once('/').unwrap_or((&b.device, ""));
                sale_key(tin, bhf_id, b.invc_no)
            })
            .collect();
        keys.sort_unstable();
        keys
    }

    /// The keys, in order, of the sales KRA has not received.
    pub fn unsynced(&self) -> Vec<String> {
        self.unsynced.iter().cloned().collect()
    }

    pub fn unsynced_count(&self) -> usize {
        self.unsynced.len()
    }

    /// Marks a sale as received by KRA; with a file, kept until [`Sales::flush`].
    pub fn set_synced(&mut self, key: &str) -> Result<bool, SaleReadError> {
        let sale =
            match &mut self.backing {
                Backing::Memory { sales, .. } => sales.get_mut(key).map(|sale| {
                    sale.synced = true;
                }),
                Backing::File { reader, pending } => {
                    if let Some(sale) = pending.get_mut(key) {
                        sale.synced = true;
                        Some(())
                    } else {
                        match read_json(reader, key)? {
                            Some(json) => {
                                let mut sale: Box<SignedSale> = serde_json::from_str(&json)
                                    .map_err(|source| SaleReadError::Corrupt {
                                        key: key.to_owned(),
                                        source,
                                    })?;
                                sale.synced = true;
                                pending.insert(key.to_owned(), sale);
                                Some(())
                            }
                            None => None,
                        }
                    }
                }
            };
        self.unsynced.remove(key);
        Ok(sale.is_some())
    }

    /// Every sale in key order, from the file when there is one (the dump).
    fn all(&self) -> Result<Vec<(String, Cow<'_, SignedSale>)>, SaleReadError> {
        match &self.backing {
            Backing::Memory { sales, .. } => Ok(sales
                .iter()
                .map(|(k, s)| (k.clone(), Cow::Borrowed(&**s)))
                .collect()),
            Backing::File { reader, pending } => {
                let mut all: BTreeMap<String, Cow<'_, SignedSale>> = BTreeMap::new();
                let mut statement = reader
                    .prepare("SELECT key, value FROM records WHERE kind = 'sale' ORDER BY key")?;
                let rows = statement.query_map([], |row| {
                    Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
                })?;
                for row in rows {
                    let (key, json) = row?;
                    let sale =
                        serde_json::from_str(&json).map_err(|source| SaleReadError::Corrupt {
                            key: key.clone(),
                            source,
                        })?;
                    all.insert(key, Cow::Owned(sale));
                }
                for (key, sale) in pending {
                    all.insert(key.clone(), Cow::Borrowed(&**sale));
                }
                Ok(all.into_iter().collect())
            }
        }
    }
}

fn read_json(reader: &Connection, key: &str) -> Result<Option<String>, rusqlite::Error> {
    reader
        .prepare_cached(READ_SALE)?
        .query_row([key], |row| row.get(0))
        .optional()
}

/// All the sales, as a map from key to sale (the dump).
impl serde::Serialize for Sales {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let all = self.all().map_err(S::Error::custom)?;
        let mut map = serializer.serialize_map(Some(all.len()))?;
        for (key, sale) in &all {
            map.serialize_entry(key, &**sale)?;
        }
        map.end()
    }
}
