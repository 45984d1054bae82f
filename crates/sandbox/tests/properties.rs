//! Properties of sale validation, on the control unit directly (no HTTP, so many cases):
//! random valid sales always sign; a sale with any total changed by 0.02 or more is
//! always refused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use ushuru_kra::types::SaleRequest;
use ushuru_kra::wire::Amount;
use ushuru_kra::{DraftLine, EndpointName, Profile, SaleDraft};
use ushuru_sandbox::{Caller, Config, ControlUnit};
use ushuru_tax::{
    Discount, LineInput, Money, Percent, Pricing, Quantity, TaxBand, TaxRates, calculate_line,
};

const TIN: &str = "P051234567A";

struct Unit {
    unit: ControlUnit,
    key: String,
    next: std::cell::Cell<u64>,
}

impl Unit {
    fn new() -> Self {
        let unit = ControlUnit::new(Config::default(), None).unwrap();
        let init = unit.handle(
            EndpointName::SelectInitOsdcInfo,
            Profile::Oscu,
            Caller::default(),
            br#"{"tin":"P051234567A","bhfId":"00","dvcSrlNo":"P"}"#,
        );
        let key = init.data.unwrap()["info"]["cmcKey"]
            .as_str()
            .unwrap()
            .to_owned();
        let me = Unit {
            unit,
            key,
            next: std::cell::Cell::new(1),
        };
        for band in ["A", "B", "C", "D", "E"] {
            let item = serde_json::json!({"itemCd": format!("ITEM-{band}"), "itemClsCd": "50202306", "itemTyCd": "2", "itemNm": band, "orgnNatCd": "KE", "pkgUnitCd": "NT", "qtyUnitCd": "U", "taxTyCd": band, "dftPrc": 1, "isrcAplcbYn": "N", "useYn": "Y", "regrId": "a", "regrNm": "a", "modrId": "a", "modrNm": "a"});
            let reply = me.call(EndpointName::SaveItem, &serde_json::to_vec(&item).unwrap());
            assert_eq!(reply.code.code(), "000");
        }
        me
    }

    fn call(&self, endpoint: EndpointName, body: &[u8]) -> ushuru_sandbox::Reply {
        let caller = Caller {
            tin: Some(TIN),
            bhf_id: Some("00"),
            cmc_key: Some(&self.key),
        };
        self.unit.handle(endpoint, Profile::Oscu, caller, body)
    }

    fn sign(&self, request: &SaleRequest) -> ushuru_sandbox::Reply {
        self.call(
            EndpointName::SaveTrnsSalesOsdc,
            &serde_json::to_vec(request).unwrap(),
        )
    }
}

fn lines() -> impl Strategy<Value = Vec<DraftLine>> {
    let line = (
        0i128..5_000_000,
        1i128..200_000,
        prop::sample::select(TaxBand::ALL.to_vec()),
        any::<bool>(),
        0i128..=10_000,
        any::<bool>(),
    )
        .prop_map(|(price, qty, band, inclusive, rate, discounted)| {
            let pricing = if inclusive {
                Pricing::VatInclusive
            } else {
                Pricing::VatExclusive
            };
            let discount = discounted.then(|| Discount::Rate(Percent::from_minor(rate).unwrap()));
            let input = LineInput::new(
                Money::from_minor(price).unwrap(),
                band,
                Quantity::from_minor(qty).unwrap(),
                pricing,
                discount,
            )
            .unwrap();
            DraftLine {
                item_cd: format!("ITEM-{band}"),
                item_nm: band.to_string(),
                item_cls_cd: Some("50202306".into()),
                pkg_unit_cd: "NT".into(),
                qty_unit_cd: "U".into(),
                priced: calculate_line(&input, &TaxRates::kenya()).unwrap(),
            }
        });
    prop::collection::vec(line, 1..12)
}

fn request(invc_no: u64, lines: Vec<DraftLine>) -> SaleRequest {
    SaleDraft {
        tin: TIN.into(),
        bhf_id: "00".into(),
        invc_no,
        org_invc_no: 0,
        trd_invc_no: format!("T-{invc_no}"),
        rcpt_ty_cd: "S".into(),
        sales_ty_cd: "N".into(),
        pmt_ty_cd: Some("01".into()),
        cust_tin: None,
        cust_nm: None,
        rfd_rsn_cd: None,
        confirmed: chrono::NaiveDate::from_ymd_opt(2026, 7, 7)
            .unwrap()
            .and_hms_opt(11, 41, 22)
            .unwrap(),
        operator: "a".into(),
        lines,
    }
    .into_request(&TaxRates::kenya())
    .unwrap()
}

/// Every total a sale carries, to change one of them.
fn totals(request: &mut SaleRequest) -> Vec<&mut Amount> {
    let mut fields = vec![
        &mut request.taxbl_amt_a,
        &mut request.taxbl_amt_b,
        &mut request.taxbl_amt_c,
        &mut request.taxbl_amt_d,
        &mut request.taxbl_amt_e,
        &mut request.tax_amt_a,
        &mut request.tax_amt_b,
        &mut request.tax_amt_c,
        &mut request.tax_amt_d,
        &mut request.tax_amt_e,
        &mut request.tot_taxbl_amt,
        &mut request.tot_tax_amt,
        &mut request.tot_amt,
    ];
    for line in &mut request.item_list {
        fields.push(&mut line.sply_amt);
        fields.push(&mut line.taxbl_amt);
        fields.push(&mut line.tax_amt);
        fields.push(&mut line.tot_amt);
    }
    fields
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_valid_sales_always_sign(sales in prop::collection::vec(lines(), 1..6)) {
        let unit = Unit::new();
        for lines in sales {
            let invc_no = unit.next.get();
            let reply = unit.sign(&request(invc_no, lines));
            prop_assert_eq!(reply.code.code(), "000", "{}", reply.message);
            unit.next.set(invc_no + 1);
        }
    }

    #[test]
    fn a_total_changed_by_two_cents_or_more_is_refused(
        lines in lines(),
        which in any::<prop::sample::Index>(),
        cents in 2i128..100_000,
        up in any::<bool>(),
    ) {
        let unit = Unit::new();
        let mut changed = request(1, lines.clone());
        let mut fields = totals(&mut changed);
        let field = which.get_mut(&mut fields);
        let delta = Money::from_minor(cents).unwrap();
        let moved = if up { field.0.checked_add(delta) } else { field.0.checked_sub(delta) };
        let moved = moved.filter(|m| !m.is_negative()).unwrap_or_else(|| field.0.checked_add(delta).unwrap());
        **field = Amount(moved);
        let reply = unit.sign(&changed);
        prop_assert_ne!(reply.code.code(), "000", "a changed total was signed");
        // And the untouched sale signs under the same number: nothing was used up.
        let reply = unit.sign(&request(1, lines));
        prop_assert_eq!(reply.code.code(), "000", "{}", reply.message);
    }
}
