//! What a sale must satisfy before the control unit signs it (kra-protocol.md §2.4, §6):
//! codes, line arithmetic, per-band header sums within KRA's 0.01, rates as published in
//! code class 04, registered items, and the credit-note rules. Numbering is checked by the
//! caller, because `--lenient` relaxes it.

use std::collections::BTreeMap;

use ushuru_kra::ResultCode;
use ushuru_kra::types::SaleRequest;
use ushuru_kra::wire::minor_difference;
use ushuru_tax::{Money, Quantity, TaxBand};

use crate::control_unit::{Config, Reply, is_pin, stored_request, unreadable};
use crate::state::{ReceiptType, State, key, sale_key};

/// KRA's tolerance on sums: one cent.
const CENT: u128 = 1;

/// Receipt labels the upstream validator accepts (§3); anything else is code 834.
const LABELS: [&str; 7] = ["NS", "NR", "CS", "CR", "TS", "TR", "PS"];

fn invalid<T>(detail: impl std::fmt::Display) -> Result<T, Reply> {
    Err(Reply::refuse(ResultCode::RequestParameterError, detail))
}

pub fn check(
    request: &SaleRequest,
    config: &Config,
    state: &State,
    tin: &str,
    bhf_id: &str,
) -> Result<(), Reply> {
    if !["S", "R"].contains(&request.rcpt_ty_cd.as_str()) {
        return invalid(format!(
            "rcptTyCd {:?} must be S (sale) or R (credit note)",
            request.rcpt_ty_cd
        ));
    }
    if let Some(kind) = &request.sales_ty_cd
        && !["N", "C", "P", "T"].contains(&kind.as_str())
    {
        return invalid(format!(
            "salesTyCd {kind:?} must be N, C, P or T (code class 14)"
        ));
    }
    if !LABELS.contains(&request.label().as_str()) {
        return Err(Reply::refuse(
            ResultCode::InvalidLabelCombination,
            format!("label {} is not one of {LABELS:?}", request.label()),
        ));
    }
    if !["01", "02", "03", "04", "05", "06"].contains(&request.sales_stts_cd.as_str()) {
        return invalid(format!(
            "salesSttsCd {:?} is not a transaction progress code (class 11)",
            request.sales_stts_cd
        ));
    }
    // KRA's NUMBER(38) is wider, but no real sequence gets near 2^63, and keeping below it
    // keeps "the next number" representable everywhere.
    if request.invc_no.0 == 0 || request.invc_no.0 > i64::MAX as u64 {
        return invalid("invcNo must be between 1 and 9223372036854775807");
    }
    if let Some(pin) = request.cust_tin.as_deref().filter(|p| !p.trim().is_empty())
        && !is_pin(pin)
    {
        return invalid(format!("custTin {pin:?} is not a PIN (A123456789B)"));
    }
    let lines = &request.item_list;
    if lines.is_empty() || lines.len() > 999 {
        return invalid(format!(
            "itemList must hold 1 to 999 lines, not {}",
            lines.len()
        ));
    }
    if request.tot_item_cnt.0 != lines.len() as u64 {
        return invalid(format!(
            "totItemCnt is {} but itemList has {} lines",
            request.tot_item_cnt,
            lines.len()
        ));
    }

    let mut band_taxable = [Money::ZERO; 5];
    let mut band_tax = [Money::ZERO; 5];
    let mut total = Money::ZERO;
    let sum = |a: Money, b: Money| {
        a.checked_add(b)
            .ok_or_else(|| Reply::refuse(ResultCode::RequestParameterError, "amounts overflow"))
    };
    for (index, line) in lines.iter().enumerate() {
        let seq = index + 1;
        if line.item_seq.0 != seq as u64 {
            return invalid(format!(
                "itemSeq of line {seq} is {}: lines are numbered 1, 2, 3, …",
                line.item_seq
            ));
        }
        let Ok(band) = line.tax_ty_cd.parse::<TaxBand>() else {
            return invalid(format!(
                "line {seq}: taxTyCd {:?} must be A, B, C, D or E",
                line.tax_ty_cd
            ));
        };
        if !config.lenient && !state.items.contains_key(&key(&[tin, &line.item_cd])) {
            return invalid(format!(
                "line {seq}: itemCd {} is not registered: saveItem first",
                line.item_cd
            ));
        }
        if !line.qty.0.is_positive() {
            return invalid(format!("line {seq}: qty must be above zero"));
        }
        for (name, amount) in [
            ("prc", line.prc),
            ("splyAmt", line.sply_amt),
            ("dcAmt", line.dc_amt),
            ("taxblAmt", line.taxbl_amt),
            ("taxAmt", line.tax_amt),
            ("totAmt", line.tot_amt),
        ] {
            if amount.0.is_negative() {
                return invalid(format!(
                    "line {seq}: {name} is negative; credit notes carry positive amounts too"
                ));
            }
        }
        if line.dc_rt.0.is_negative() || line.dc_rt.0.minor() > 100 * 100 {
            return invalid(format!("line {seq}: dcRt must be between 0 and 100"));
        }
        let Some(supply) = qty_times_price(line.qty.0, line.prc.0) else {
            return invalid(format!(
                "line {seq}: qty × prc is beyond the supported range"
            ));
        };
        if minor_difference(supply, line.sply_amt.0) > CENT {
            return invalid(format!(
                "line {seq}: splyAmt {} is not qty × prc = {supply}",
                line.sply_amt
            ));
        }
        if line.dc_amt.0 > line.sply_amt.0 {
            return invalid(format!(
                "line {seq}: dcAmt {} exceeds splyAmt {}",
                line.dc_amt, line.sply_amt
            ));
        }
        // Two VAT conventions are in use and KRA accepts both (§2.4): VAT on the net amount
        // (taxAmt = taxblAmt × r), or VAT inside it (taxAmt = taxblAmt × r / (1 + r)).
        let rate = config.rates.rate(band).percent().minor();
        let taxable = line.taxbl_amt.0.minor();
        let on_net = taxable * rate / 10_000;
        let inside = taxable * rate / (10_000 + rate);
        let tax = line.tax_amt.0.minor();
        if (tax - on_net).abs() > 1 && (tax - inside).abs() > 1 {
            return invalid(format!(
                "line {seq}: taxAmt {} does not fit band {band} at {} % of taxblAmt {}",
                line.tax_amt,
                config.rates.rate(band).percent(),
                line.taxbl_amt
            ));
        }
        // The line's amounts must tie together under one of the conventions: VAT on top
        // (taxblAmt = splyAmt − dcAmt or totAmt = splyAmt − dcAmt, totAmt = taxblAmt + taxAmt)
        // or VAT inside (totAmt = taxblAmt = splyAmt − dcAmt).
        let close = |a: Money, b: Money| minor_difference(a, b) <= CENT;
        let after_discount = line
            .sply_amt
            .0
            .checked_sub(line.dc_amt.0)
            .unwrap_or(Money::ZERO);
        let (taxable, tax, line_total) = (line.taxbl_amt.0, line.tax_amt.0, line.tot_amt.0);
        let on_top = taxable
            .checked_add(tax)
            .is_some_and(|sum| close(line_total, sum))
            && (close(after_discount, line_total) || close(after_discount, taxable));
        let inside = close(line_total, taxable) && close(after_discount, line_total);
        if !on_top && !inside {
            return invalid(format!(
                "line {seq}: the amounts do not add up: splyAmt {} − dcAmt {} against taxblAmt {} + taxAmt {} = totAmt {}",
                line.sply_amt, line.dc_amt, line.taxbl_amt, line.tax_amt, line.tot_amt
            ));
        }
        if !config.lenient
            && let Some(item) = state.items.get(&key(&[tin, &line.item_cd]))
        {
            if item.value.tax_ty_cd != line.tax_ty_cd {
                return invalid(format!(
                    "line {seq}: itemCd {} is registered under band {}, not {}",
                    line.item_cd, item.value.tax_ty_cd, line.tax_ty_cd
                ));
            }
            if item.value.use_yn != "Y" {
                return invalid(format!(
                    "line {seq}: itemCd {} is not in use (useYn N)",
                    line.item_cd
                ));
            }
        }
        band_taxable[band.index()] = sum(band_taxable[band.index()], line.taxbl_amt.0)?;
        band_tax[band.index()] = sum(band_tax[band.index()], line.tax_amt.0)?;
        total = sum(total, line.tot_amt.0)?;
    }

    let mut header_taxable = Money::ZERO;
    let mut header_tax = Money::ZERO;
    for (band, (taxable, rate, tax)) in TaxBand::ALL.into_iter().zip(request.band_fields()) {
        let expected = config.rates.rate(band).percent();
        if rate.0 != expected {
            return invalid(format!(
                "taxRt{band} is {rate} but band {band}'s rate is {expected} (code class 04)"
            ));
        }
        if minor_difference(taxable.0, band_taxable[band.index()]) > CENT {
            return invalid(format!(
                "taxblAmt{band} {taxable} is not the sum of its lines, {}",
                band_taxable[band.index()]
            ));
        }
        if minor_difference(tax.0, band_tax[band.index()]) > CENT {
            return invalid(format!(
                "taxAmt{band} {tax} is not the sum of its lines, {}",
                band_tax[band.index()]
            ));
        }
        header_taxable = sum(header_taxable, taxable.0)?;
        header_tax = sum(header_tax, tax.0)?;
    }
    if minor_difference(request.tot_taxbl_amt.0, header_taxable) > CENT {
        return invalid(format!(
            "totTaxblAmt {} is not the sum of taxblAmtA..E, {header_taxable}",
            request.tot_taxbl_amt
        ));
    }
    if minor_difference(request.tot_tax_amt.0, header_tax) > CENT {
        return invalid(format!(
            "totTaxAmt {} is not the sum of taxAmtA..E, {header_tax}",
            request.tot_tax_amt
        ));
    }
    if minor_difference(request.tot_amt.0, total) > CENT {
        return invalid(format!(
            "totAmt {} is not the sum of the lines' totAmt, {total}",
            request.tot_amt
        ));
    }

    match request.rcpt_ty_cd.as_str() {
        "R" => check_credit_note(request, state, tin, bhf_id),
        _ if request.org_invc_no.0 != 0 => invalid("orgInvcNo must be 0 for a sale"),
        _ => Ok(()),
    }
}

fn qty_times_price(qty: Quantity, price: Money) -> Option<Money> {
    let product = qty.minor().checked_mul(price.minor())?;
    // qty has 4 places: HALF_UP back to cents.
    let cents = (product.abs() + 5_000) / 10_000 * product.signum();
    Money::from_minor(cents).ok()
}

/// A credit note reverses (part of) a signed sale of the same branch, never more than
/// remains of it: per item quantity and in total.
fn check_credit_note(
    request: &SaleRequest,
    state: &State,
    tin: &str,
    bhf_id: &str,
) -> Result<(), Reply> {
    let original_no = request.org_invc_no.0;
    let Some(original) = state
        .sales
        .get(&sale_key(tin, bhf_id, original_no))
        .map_err(unreadable)?
        .filter(|s| s.summary().rcpt_ty == ReceiptType::Sale)
    else {
        return invalid(format!(
            "orgInvcNo {original_no} is not a signed sale of this branch"
        ));
    };
    let original = stored_request(&original)?;
    // A normal credit note reverses a normal sale, a training one a training sale; a
    // proforma is no sale (its label PR is refused as 834 before this).
    let kind = |r: &SaleRequest| r.sales_ty_cd.clone().unwrap_or_else(|| "N".into());
    if kind(request) != kind(&original) {
        return invalid(format!(
            "a credit note of type {} cannot reverse invoice {original_no} of type {}",
            kind(request),
            kind(&original)
        ));
    }
    // KRA requires the buyer of the credit note to be the buyer of the sale (Odoo, live).
    let buyer = |r: &SaleRequest| r.cust_tin.clone().filter(|t| !t.trim().is_empty());
    if buyer(&original).is_some() && buyer(request) != buyer(&original) {
        return invalid(format!(
            "custTin must be the original's buyer, {}",
            buyer(&original).unwrap_or_default()
        ));
    }
    let mut remaining_qty: BTreeMap<&str, Quantity> = BTreeMap::new();
    for line in &original.item_list {
        let entry = remaining_qty.entry(&line.item_cd).or_insert(Quantity::ZERO);
        *entry = entry.checked_add(line.qty.0).unwrap_or(*entry);
    }
    let mut remaining_total = original.tot_amt.0;
    // The credit notes already signed against the original (the index knows which).
    for &number in state.sales.credit_notes(&key(&[tin, bhf_id]), original_no) {
        let Some(earlier) = state
            .sales
            .get(&sale_key(tin, bhf_id, number))
            .map_err(unreadable)?
        else {
            continue;
        };
        let earlier = stored_request(&earlier)?;
        for line in &earlier.item_list {
            if let Some(left) = remaining_qty.get_mut(line.item_cd.as_str()) {
                *left = left.checked_sub(line.qty.0).unwrap_or(*left);
            }
        }
        remaining_total = remaining_total
            .checked_sub(earlier.tot_amt.0)
            .unwrap_or(remaining_total);
    }
    // The note's own lines for one item are added up before comparing.
    let mut returned: BTreeMap<&str, Quantity> = BTreeMap::new();
    for line in &request.item_list {
        let entry = returned.entry(&line.item_cd).or_insert(Quantity::ZERO);
        *entry = entry.checked_add(line.qty.0).unwrap_or(Quantity::ZERO);
    }
    for (item, quantity) in returned {
        match remaining_qty.get(item) {
            None => {
                return invalid(format!(
                    "itemCd {item} is not on the original invoice {original_no}"
                ));
            }
            Some(left) if quantity > *left => {
                return invalid(format!(
                    "the credit note returns {quantity} of {item} but only {left} remain of invoice {original_no}"
                ));
            }
            Some(_) => {}
        }
    }
    if request.tot_amt.0 > remaining_total {
        return invalid(format!(
            "the credit note's totAmt {} exceeds the {remaining_total} that remains of invoice {original_no}",
            request.tot_amt
        ));
    }
    Ok(())
}
