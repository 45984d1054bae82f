//! The client against the sandbox, every endpoint, on each path profile: OSCU (headers),
//! VSCU JAR (RRA paths, identity in the body) and GavaConnect (token, wrapped envelope).

// A test crate: a panic in a helper is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use ushuru_kra::endpoints::*;
use ushuru_kra::types::*;
use ushuru_kra::wire::{Date8, DateTime14, Int, Qty};
use ushuru_kra::{Outcome, Profile};
use ushuru_sandbox::{Config, Mode};

fn long_ago() -> LastRequest {
    LastRequest {
        last_req_dt: DateTime14::parse("20180101000000").unwrap(),
    }
}

fn far_future() -> LastRequest {
    LastRequest {
        last_req_dt: DateTime14::parse("20991231235959").unwrap(),
    }
}

fn operator_fields() -> (String, String, String, String) {
    (
        "admin".into(),
        "Admin".into(),
        "admin".into(),
        "Admin".into(),
    )
}

async fn every_endpoint(profile: Profile, mode: Mode) {
    let handle = start(Config {
        mode,
        ..Config::default()
    })
    .await;
    let hq = initialised(&handle, profile, TIN, "00").await;

    // Reference data.
    let codes = ok(hq.call::<CodeLists>(&long_ago()).await.outcome).unwrap();
    let tax_types = codes.cls_list.iter().find(|c| c.cd_cls == "04").unwrap();
    let rates: Vec<_> = tax_types
        .dtl_list
        .iter()
        .map(|d| (d.cd.as_str(), d.user_dfn_cd1.as_deref().unwrap()))
        .collect();
    assert_eq!(
        rates,
        [("A", "0"), ("B", "16"), ("C", "0"), ("D", "0"), ("E", "8")]
    );
    assert!(matches!(
        hq.call::<CodeLists>(&far_future()).await.outcome,
        Outcome::Ok { data: None, .. }
    ));
    let classes = ok(hq.call::<ItemClasses>(&long_ago()).await.outcome).unwrap();
    assert!(
        classes
            .item_cls_list
            .iter()
            .any(|c| c.item_cls_cd == "50202306")
    );
    let notices = ok(hq.call::<Notices>(&long_ago()).await.outcome).unwrap();
    assert!(!notices.notice_list.is_empty());
    let buyer = ok(hq
        .call::<TaxpayerLookup>(&CustomerLookupRequest {
            custm_tin: "P051234567X".into(),
        })
        .await
        .outcome)
    .unwrap();
    assert_eq!(buyer.cust_list[0].taxpr_nm, "Buyer Ltd");
    let unknown = hq
        .call::<TaxpayerLookup>(&CustomerLookupRequest {
            custm_tin: "P999999999Z".into(),
        })
        .await
        .outcome;
    assert!(
        matches!(unknown, Outcome::Ok { data: None, .. }),
        "{unknown:?}"
    );

    // A second branch appears in the branch list.
    let branch = initialised(&handle, profile, TIN, "01").await;
    let branches = ok(hq.call::<Branches>(&long_ago()).await.outcome).unwrap();
    let ids: Vec<_> = branches
        .bhf_list
        .iter()
        .map(|b| (b.bhf_id.as_str(), b.hq_yn.as_str()))
        .collect();
    assert_eq!(ids, [("00", "Y"), ("01", "N")]);

    // Branch master data.
    let (regr_id, regr_nm, modr_id, modr_nm) = operator_fields();
    let customer = SaveCustomerRequest {
        cust_no: "C0001".into(),
        cust_tin: "P051234567X".into(),
        cust_nm: "Buyer Ltd".into(),
        adrs: None,
        tel_no: None,
        email: None,
        fax_no: None,
        use_yn: "Y".into(),
        remark: None,
        regr_id: regr_id.clone(),
        regr_nm: regr_nm.clone(),
        modr_id: modr_id.clone(),
        modr_nm: modr_nm.clone(),
    };
    ok(hq.call::<SaveCustomer>(&customer).await.outcome);
    let user = SaveUserRequest {
        user_id: "cashier1".into(),
        user_nm: "Cashier One".into(),
        pwd: "s3cret".into(),
        adrs: None,
        cntc: None,
        auth_cd: None,
        remark: None,
        use_yn: "Y".into(),
        regr_id: regr_id.clone(),
        regr_nm: regr_nm.clone(),
        modr_id: modr_id.clone(),
        modr_nm: modr_nm.clone(),
    };
    ok(hq.call::<SaveUser>(&user).await.outcome);
    let insurance = SaveInsuranceRequest {
        isrcc_cd: "NHIF".into(),
        isrcc_nm: "Social Health".into(),
        isrc_rt: Int(20),
        use_yn: "Y".into(),
        regr_id: regr_id.clone(),
        regr_nm: regr_nm.clone(),
        modr_id: modr_id.clone(),
        modr_nm: modr_nm.clone(),
    };
    ok(hq.call::<SaveInsurance>(&insurance).await.outcome);

    // Items: save, update, list incrementally, compose.
    register(&hq, "SODA-500", "B").await;
    register(&hq, "SYRUP", "B").await;
    let mut renamed = item_request("SODA-500", "B");
    renamed.item_nm = "Soda 500 ml".into();
    ok(hq.call::<SaveItemEndpoint>(&renamed).await.outcome);
    let items = ok(hq.call::<Items>(&long_ago()).await.outcome).unwrap();
    assert_eq!(
        items.item_list.len(),
        2,
        "saving an existing code updates it"
    );
    assert_eq!(
        items
            .item_list
            .iter()
            .find(|i| i.item_cd == "SODA-500")
            .unwrap()
            .item_nm,
        "Soda 500 ml"
    );
    assert!(matches!(
        hq.call::<Items>(&far_future()).await.outcome,
        Outcome::Ok { data: None, .. }
    ));
    let composition = SaveItemCompositionRequest {
        item_cd: "SODA-500".into(),
        cpst_item_cd: "SYRUP".into(),
        cpst_qty: Qty::whole(1),
        regr_id: regr_id.clone(),
        regr_nm: regr_nm.clone(),
    };
    ok(hq.call::<SaveComposition>(&composition).await.outcome);

    // Imports: listed, then approved.
    let imports = ok(hq.call::<ImportItems>(&long_ago()).await.outcome).unwrap();
    let import = &imports.item_list[0];
    let update = UpdateImportItemRequest {
        task_cd: import.task_cd.clone(),
        dcl_de: Date8::parse("20240101").unwrap(),
        item_seq: import.item_seq,
        hs_cd: import.hs_cd.clone(),
        item_cls_cd: "43211503".into(),
        item_cd: "SODA-500".into(),
        impt_item_stts_cd: "3".into(),
        remark: None,
        modr_id: modr_id.clone(),
        modr_nm: modr_nm.clone(),
    };
    ok(hq.call::<UpdateImport>(&update).await.outcome);
    let imports = ok(hq.call::<ImportItems>(&long_ago()).await.outcome).unwrap();
    assert_eq!(imports.item_list[0].impt_item_stts_cd, "3");

    // A sale, its lookup, and a credit note.
    let receipt = sign(&hq, 1, "SODA-500", "5800").await;
    assert_eq!((receipt.cur_rcpt_no, receipt.tot_rcpt_no), (Int(1), Int(1)));
    assert_eq!(
        (receipt.intrl_data.len(), receipt.rcpt_sign.len()),
        (26, 16)
    );
    if mode == Mode::Vscu {
        assert!(
            receipt
                .sdc_id
                .as_deref()
                .is_some_and(|id| id.starts_with("KRACU")),
            "the VSCU answer carries sdcId"
        );
    }
    let found = ok(hq
        .call::<InvoiceDetails>(&InvoiceDetailsRequest { invc_no: Int(1) })
        .await
        .outcome)
    .unwrap();
    let stored = &found.sales_list[0];
    assert_eq!(
        (stored.invc_no, stored.receipt.rcpt_sign.as_str()),
        (Int(1), receipt.rcpt_sign.as_str())
    );
    assert_eq!(stored.tot_amt.to_string(), "5800.00");
    let none = hq
        .call::<InvoiceDetails>(&InvoiceDetailsRequest { invc_no: Int(99) })
        .await
        .outcome;
    assert!(matches!(none, Outcome::Ok { data: None, .. }));
    let refund = credit_note(
        TIN,
        "00",
        2,
        1,
        vec![line("SODA-500", priced("5800", "B", "1"))],
    );
    let refund_receipt = ok(hq.call::<SignSale>(&refund).await.outcome).unwrap();
    assert_eq!(
        (refund_receipt.cur_rcpt_no, refund_receipt.tot_rcpt_no),
        (Int(1), Int(2)),
        "NR counts apart from NS"
    );

    // A B2B sale appears in the buyer's purchase-sales list.
    let buyer_client = initialised(&handle, profile, "P051234567X", "00").await;
    let mut b2b = sale(
        TIN,
        "00",
        3,
        vec![line("SODA-500", priced("116", "B", "2"))],
    );
    b2b.cust_tin = Some("P051234567X".into());
    ok(hq.call::<SignSale>(&b2b).await.outcome);
    let purchases = ok(buyer_client
        .call::<PurchaseSales>(&long_ago())
        .await
        .outcome)
    .unwrap();
    assert_eq!(purchases.sale_list.len(), 1);
    assert_eq!(
        (
            purchases.sale_list[0].spplr_tin.as_str(),
            purchases.sale_list[0].spplr_invc_no
        ),
        (TIN, Int(3))
    );

    // The buyer records the purchase.
    let bought = &purchases.sale_list[0];
    let purchase = PurchaseRequest {
        spplr_tin: Some(TIN.into()),
        invc_no: Int(1),
        org_invc_no: Int(0),
        spplr_bhf_id: Some("00".into()),
        spplr_nm: bought.spplr_nm.clone(),
        spplr_invc_no: Some(bought.spplr_invc_no),
        reg_ty_cd: "A".into(),
        pchs_ty_cd: "N".into(),
        rcpt_ty_cd: "P".into(),
        pmt_ty_cd: "01".into(),
        pchs_stts_cd: "02".into(),
        cfm_dt: Some(bought.cfm_dt),
        pchs_dt: bought.sales_dt,
        wrhs_dt: None,
        cncl_req_dt: None,
        cncl_dt: None,
        rfd_dt: None,
        tot_item_cnt: bought.tot_item_cnt,
        taxbl_amt_a: bought.taxbl_amt_a,
        taxbl_amt_b: bought.taxbl_amt_b,
        taxbl_amt_c: bought.taxbl_amt_c,
        taxbl_amt_d: bought.taxbl_amt_d,
        taxbl_amt_e: bought.taxbl_amt_e,
        tax_rt_a: bought.tax_rt_a,
        tax_rt_b: bought.tax_rt_b,
        tax_rt_c: bought.tax_rt_c,
        tax_rt_d: bought.tax_rt_d,
        tax_rt_e: bought.tax_rt_e,
        tax_amt_a: bought.tax_amt_a,
        tax_amt_b: bought.tax_amt_b,
        tax_amt_c: bought.tax_amt_c,
        tax_amt_d: bought.tax_amt_d,
        tax_amt_e: bought.tax_amt_e,
        tot_taxbl_amt: bought.tot_taxbl_amt,
        tot_tax_amt: bought.tot_tax_amt,
        tot_amt: bought.tot_amt,
        remark: None,
        regr_id: regr_id.clone(),
        regr_nm: regr_nm.clone(),
        modr_id: modr_id.clone(),
        modr_nm: modr_nm.clone(),
        item_list: bought.item_list.clone(),
    };
    ok(buyer_client.call::<SavePurchase>(&purchase).await.outcome);

    // Stock moved out of the head office to branch 01 shows in 01's stock-move list.
    let movement = StockIoRequest {
        sar_no: Int(1),
        org_sar_no: Int(0),
        reg_ty_cd: "M".into(),
        cust_tin: Some(TIN.into()),
        cust_nm: None,
        cust_bhf_id: Some("01".into()),
        sar_ty_cd: "13".into(),
        ocrn_dt: Date8::parse("20260707").unwrap(),
        tot_item_cnt: Int(1),
        tot_taxbl_amt: bought.item_list[0].taxbl_amt,
        tot_tax_amt: bought.item_list[0].tax_amt,
        tot_amt: bought.item_list[0].tot_amt,
        remark: None,
        regr_id: regr_id.clone(),
        regr_nm: regr_nm.clone(),
        modr_id: modr_id.clone(),
        modr_nm: modr_nm.clone(),
        item_list: bought.item_list.clone(),
    };
    ok(hq.call::<StockInOut>(&movement).await.outcome);
    let moves = ok(branch.call::<StockMoves>(&long_ago()).await.outcome).unwrap();
    assert_eq!(moves.stock_list.len(), 1);
    assert_eq!(moves.stock_list[0].sar_no, Int(1));
    assert!(matches!(
        hq.call::<StockMoves>(&long_ago()).await.outcome,
        Outcome::Ok { data: None, .. }
    ));
    let master = StockMasterRequest {
        item_cd: "SODA-500".into(),
        rsd_qty: Qty::whole(42),
        regr_id,
        regr_nm,
        modr_id,
        modr_nm,
    };
    ok(hq.call::<StockMaster>(&master).await.outcome);

    // A day reading, then its close.
    let today = Date8(sandbox(&handle).unit().clock().now().date());
    let reading = ok(hq
        .call::<ReadDay>(&ReportRequest { rpt_de: today })
        .await
        .outcome)
    .unwrap();
    assert_eq!(
        (
            reading.closed_yn.as_str(),
            reading.rpt_no,
            reading.normal.sale_cnt,
            reading.normal.refund_cnt
        ),
        ("N", Int(1), Int(2), Int(1))
    );
    let closed = ok(hq
        .call::<CloseDay>(&ReportRequest { rpt_de: today })
        .await
        .outcome)
    .unwrap();
    assert_eq!((closed.closed_yn.as_str(), closed.rpt_no), ("Y", Int(1)));

    // The dump shows what was stored, with the secrets redacted.
    let (_, dump) = control(&handle, reqwest::Method::GET, "/_sandbox/state", None).await;
    for kind in [
        "customers",
        "users",
        "insurances",
        "compositions",
        "purchases",
        "stock_io",
        "stock_master",
        "day_reports",
    ] {
        assert_eq!(dump[kind].as_object().map(|m| m.len()), Some(1), "{kind}");
    }
    assert_eq!(
        dump["devices"][format!("{TIN}/00")]["cmc_key"],
        "<redacted>"
    );
    assert_eq!(
        dump["users"][format!("{TIN}/00/cashier1")]["value"]["pwd"],
        "<redacted>"
    );
    handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_on_oscu_paths() {
    every_endpoint(Profile::Oscu, Mode::Oscu).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_on_vscu_paths() {
    every_endpoint(Profile::Vscu, Mode::Vscu).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_through_gavaconnect() {
    every_endpoint(Profile::GavaConnect, Mode::Oscu).await;
}
