//! The reference data the sandbox serves: KRA's code classes (§3), a slice of the item
//! classification, notices and a few registered taxpayers.

use chrono::NaiveDateTime;
use ushuru_kra::types::{CodeClass, CodeDetail, ItemClass, Notice, Taxpayer};
use ushuru_kra::wire::{DateTime14, Int};
use ushuru_tax::{TaxBand, TaxRates};

/// When the catalogue last changed: a `lastReqDt` before this gets it all, after it `001`.
pub fn published() -> NaiveDateTime {
    NaiveDateTime::parse_from_str("20240101000000", DateTime14::FORMAT).unwrap_or_default()
}

fn class(cd_cls: &str, name: &str, codes: &[(&str, &str)]) -> CodeClass {
    CodeClass {
        cd_cls: cd_cls.to_owned(),
        cd_cls_nm: name.to_owned(),
        cd_cls_desc: None,
        use_yn: "Y".to_owned(),
        user_dfn_nm1: None,
        user_dfn_nm2: None,
        user_dfn_nm3: None,
        dtl_list: codes
            .iter()
            .enumerate()
            .map(|(i, (cd, nm))| CodeDetail {
                cd: (*cd).to_owned(),
                cd_nm: (*nm).to_owned(),
                cd_desc: None,
                use_yn: "Y".to_owned(),
                srt_ord: Some(Int(i as u64 + 1)),
                user_dfn_cd1: None,
                user_dfn_cd2: None,
                user_dfn_cd3: None,
            })
            .collect(),
    }
}

/// The code classes, with class 04 carrying the configured rates in `userDfnCd1` and the
/// print labels in `userDfnCd2`, as KRA's live list does.
pub fn code_classes(rates: &TaxRates) -> Vec<CodeClass> {
    let mut tax_types = class(
        "04",
        "Taxation Type",
        &[
            ("A", "A-Exempt"),
            ("B", "B-VAT 16%"),
            ("C", "C-Zero Rated"),
            ("D", "D-Non VAT"),
            ("E", "E-VAT 8%"),
        ],
    );
    let labels = ["A-EX", "B-16%", "TAX C", "TAX D", "E-8%"];
    for (detail, band) in tax_types.dtl_list.iter_mut().zip(TaxBand::ALL) {
        let rate = rates.rate(band).percent();
        detail.cd_nm = match band {
            TaxBand::B | TaxBand::E => format!("{band}-VAT {}%", rate.to_decimal().normalize()),
            _ => detail.cd_nm.clone(),
        };
        detail.user_dfn_cd1 = Some(rate.to_decimal().normalize().to_string());
        detail.user_dfn_cd2 = Some(labels[band.index()].to_owned());
    }
    vec![
        tax_types,
        class(
            "05",
            "Country",
            &[
                ("KE", "Kenya"),
                ("UG", "Uganda"),
                ("TZ", "Tanzania"),
                ("RW", "Rwanda"),
                ("CN", "China"),
                ("IN", "India"),
                ("AE", "United Arab Emirates"),
                ("US", "United States"),
            ],
        ),
        class(
            "07",
            "Payment Type",
            &[
                ("01", "CASH"),
                ("02", "CREDIT"),
                ("03", "CASH/CREDIT"),
                ("04", "BANK CHECK"),
                ("05", "DEBIT&CREDIT CARD"),
                ("06", "MOBILE MONEY"),
                ("07", "OTHER"),
            ],
        ),
        class(
            "10",
            "Quantity Unit",
            &[
                ("U", "Pieces/item [Number]"),
                ("KG", "Kilo-Gramme"),
                ("L", "Litre"),
                ("NO", "Number"),
                ("G", "Gram"),
                ("M", "Metre"),
                ("BX", "Box"),
                ("TNE", "Tonne"),
            ],
        ),
        class(
            "11",
            "Transaction Progress",
            &[
                ("01", "Wait for Approval"),
                ("02", "Approved"),
                ("03", "Cancel Requested"),
                ("04", "Canceled"),
                ("05", "Credit Note Generated"),
                ("06", "Transferred"),
            ],
        ),
        class(
            "12",
            "Stock I/O Type",
            &[
                ("01", "Import"),
                ("02", "Purchase"),
                ("03", "Return"),
                ("04", "Stock Movement"),
                ("05", "Processing"),
                ("06", "Adjustment"),
                ("11", "Sale"),
                ("12", "Return"),
                ("13", "Stock Movement"),
                ("14", "Processing"),
                ("15", "Discarding"),
                ("16", "Adjustment"),
            ],
        ),
        class(
            "14",
            "Transaction Type",
            &[
                ("C", "Copy"),
                ("N", "Normal"),
                ("P", "Proforma"),
                ("T", "Training"),
            ],
        ),
        class(
            "15",
            "Taxpayer Status",
            &[("A", "Active"), ("D", "Deleted")],
        ),
        class(
            "17",
            "Packing Unit",
            &[
                ("NT", "NET"),
                ("BG", "Bag"),
                ("BX", "Box"),
                ("CT", "Carton"),
                ("OU", "Outer packaging"),
                ("BA", "Barrel"),
                ("BL", "Bale"),
            ],
        ),
        class(
            "24",
            "Item Type",
            &[
                ("1", "Raw Material"),
                ("2", "Finished Product"),
                ("3", "Service without stock"),
            ],
        ),
        class(
            "26",
            "Import Item Status",
            &[
                ("1", "Unsent"),
                ("2", "Waiting"),
                ("3", "Approved"),
                ("4", "Cancelled"),
            ],
        ),
        class(
            "31",
            "Registration Type",
            &[("A", "Automatic"), ("M", "Manual")],
        ),
        class(
            "32",
            "Refund Reason",
            &[
                ("01", "Missing Quantity"),
                ("02", "Missing Data"),
                ("03", "Damaged"),
                ("04", "Wasted"),
                ("05", "Raw Material Shortage"),
                ("06", "Refund"),
            ],
        ),
        class(
            "33",
            "Currency",
            &[
                ("KES", "Kenyan Shilling"),
                ("USD", "US Dollar"),
                ("EUR", "Euro"),
                ("UGX", "Ugandan Shilling"),
                ("TZS", "Tanzanian Shilling"),
            ],
        ),
        class(
            "37",
            "Sales Receipt Type",
            &[("S", "Sale"), ("R", "Credit Note after Sale")],
        ),
        class(
            "38",
            "Purchase Receipt Type",
            &[("P", "Purchase"), ("R", "Credit Note after Purchase")],
        ),
    ]
}

/// A slice of the UNSPSC-based item classification, enough to register common goods.
pub fn item_classes() -> Vec<ItemClass> {
    let classes: &[(&str, &str, u64, Option<&str>)] = &[
        (
            "10000000",
            "Live Plant and Animal Material and Accessories and Supplies",
            1,
            None,
        ),
        ("50000000", "Food Beverage and Tobacco Products", 1, None),
        ("50200000", "Beverages", 2, None),
        ("50202300", "Non alcoholic beverages", 3, Some("B")),
        ("50202301", "Water", 4, Some("B")),
        ("50202306", "Soft drinks", 4, Some("B")),
        ("50220000", "Cereal and pulse products", 2, None),
        ("50221200", "Processed cereals", 3, Some("A")),
        ("50221201", "Maize flour", 4, Some("A")),
        (
            "50161500",
            "Chocolate and sugars and sweeteners",
            3,
            Some("B"),
        ),
        ("50161509", "Sugar", 4, Some("B")),
        ("15100000", "Fuels", 2, None),
        ("15101505", "Diesel fuel", 4, Some("E")),
        ("15101506", "Gasoline or Petrol", 4, Some("E")),
        ("43211500", "Computers", 3, Some("B")),
        ("43211503", "Notebook computers", 4, Some("B")),
        (
            "80101500",
            "Business and corporate management consultation services",
            3,
            Some("B"),
        ),
        (
            "80101505",
            "Corporate objectives or policy development",
            4,
            Some("B"),
        ),
        ("85121800", "Medical laboratories", 3, Some("A")),
        ("90101500", "Restaurants", 3, Some("B")),
        ("10101601", "Live chickens", 4, Some("A")),
        ("99010000", "Exports (zero-rated supplies)", 2, Some("C")),
    ];
    classes
        .iter()
        .map(|(cd, nm, lvl, tax)| ItemClass {
            item_cls_cd: (*cd).to_owned(),
            item_cls_nm: (*nm).to_owned(),
            item_cls_lvl: Int(*lvl),
            tax_ty_cd: tax.map(str::to_owned),
            mjr_tg_yn: Some(if *lvl == 1 { "Y" } else { "N" }.to_owned()),
            use_yn: "Y".to_owned(),
        })
        .collect()
}

pub fn notices() -> Vec<Notice> {
    vec![Notice {
        notice_no: Int(1),
        title: "Welcome to the Ushuru control-unit sandbox".to_owned(),
        cont: "This control unit is an emulator. Receipts it signs are not fiscal documents."
            .to_owned(),
        dtl_url: None,
        regr_nm: Some("Ushuru".to_owned()),
        reg_dt: DateTime14(published()),
    }]
}

/// Taxpayers known before any device is initialised (buyers to look up).
pub fn registered_taxpayers() -> Vec<Taxpayer> {
    [
        ("P051234567X", "Buyer Ltd"),
        ("A000123456B", "Sample Supplier Ltd"),
        ("P000000001Z", "Kenya Test Traders"),
    ]
    .iter()
    .map(|(tin, name)| taxpayer(tin, name))
    .collect()
}

pub fn taxpayer(tin: &str, name: &str) -> Taxpayer {
    Taxpayer {
        tin: tin.to_owned(),
        taxpr_nm: name.to_owned(),
        taxpr_stts_cd: "A".to_owned(),
        prvnc_nm: Some("NAIROBI".to_owned()),
        dstrt_nm: Some("WESTLANDS".to_owned()),
        sctr_nm: Some("WESTLANDS".to_owned()),
        loc_desc: Some("Sandbox".to_owned()),
    }
}
