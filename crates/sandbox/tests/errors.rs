//! Every refusal the sandbox can give, with KRA's code.

// A test crate: a panic in a helper is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;

use common::*;
use serde_json::{Value, json};
use ushuru_kra::endpoints::*;
use ushuru_kra::types::*;
use ushuru_kra::wire::{Amount, Date8, Int, Qty, Rate};
use ushuru_kra::{Outcome, Profile, Secret};
use ushuru_sandbox::{Config, Mode};

async fn raw(
    handle: &ushuru_sandbox::SandboxHandle,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Value {
    let mut request = reqwest::Client::new()
        .post(format!("{}{path}", handle.url()))
        .body(body.to_owned());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap().json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transport_and_identity_errors() {
    let handle = start(Config::default()).await;
    let hq = initialised(&handle, Profile::Oscu, TIN, "00").await;
    let key = hq.config().cmc_key.clone().unwrap();

    // 911: no request text.
    for body in ["", "not json", "[1,2]"] {
        let answer = raw(
            &handle,
            "/saveItem",
            &[("tin", TIN), ("bhfId", "00"), ("cmcKey", key.expose())],
            body,
        )
        .await;
        assert_eq!(answer["resultCd"], "911", "{body:?}");
        assert_eq!(answer["data"], Value::Null);
    }
    // 900: headers missing.
    let answer = raw(
        &handle,
        "/selectCodeList",
        &[],
        r#"{"lastReqDt":"20180101000000"}"#,
    )
    .await;
    assert_eq!(answer["resultCd"], "900");
    let answer = raw(
        &handle,
        "/selectCodeList",
        &[("tin", TIN), ("bhfId", "00")],
        r#"{"lastReqDt":"20180101000000"}"#,
    )
    .await;
    assert_eq!(answer["resultCd"], "900", "OSCU needs the cmcKey");
    // 901: wrong key; unknown device.
    let wrong = hq.with_cmc_key(Secret::new("0".repeat(32)));
    assert_eq!(
        rejected(
            wrong
                .call::<CodeLists>(&LastRequest {
                    last_req_dt: ushuru_kra::wire::DateTime14::parse("20180101000000").unwrap()
                })
                .await
                .outcome
        )
        .0,
        "901"
    );
    let stranger = client(&handle, Profile::Oscu, "P000000001Z", "00").with_cmc_key(key.clone());
    let (code, message) = rejected(
        stranger
            .call::<CodeLists>(&LastRequest {
                last_req_dt: ushuru_kra::wire::DateTime14::parse("20180101000000").unwrap(),
            })
            .await
            .outcome,
    );
    assert_eq!(code, "901");
    assert!(message.contains("no device"), "{message}");
    // 912: a method other than POST.
    let answer: Value = reqwest::get(format!("{}/saveItem", handle.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["resultCd"], "912");
    // The body's identity must agree with the headers.
    let answer = raw(
        &handle,
        "/selectCodeList",
        &[("tin", TIN), ("bhfId", "00"), ("cmcKey", key.expose())],
        r#"{"lastReqDt":"20180101000000","tin":"P000000001Z"}"#,
    )
    .await;
    assert_eq!(answer["resultCd"], "910");
    // An unknown path is not a KRA endpoint.
    let status = reqwest::Client::new()
        .post(format!("{}/saveNothing", handle.url()))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 404);
    handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initialisation_errors() {
    let approved: BTreeSet<String> = ["POS-OK".to_string()].into();
    let handle = start(Config {
        approved_serials: Some(approved),
        ..Config::default()
    })
    .await;
    let client = client(&handle, Profile::Oscu, TIN, "00");
    let init = |serial: &str, tin: &str, bhf: &str| InitRequest {
        tin: tin.into(),
        bhf_id: bhf.into(),
        dvc_srl_no: serial.into(),
    };
    // 901: a serial KRA has not approved.
    assert_eq!(
        rejected(
            client
                .call::<InitDevice>(&init("POS-NO", TIN, "00"))
                .await
                .outcome
        )
        .0,
        "901"
    );
    // 910: not a PIN, not a branch id, no serial.
    assert_eq!(
        rejected(
            client
                .call::<InitDevice>(&init("POS-OK", "P05123", "00"))
                .await
                .outcome
        )
        .0,
        "910"
    );
    assert_eq!(
        rejected(
            client
                .call::<InitDevice>(&init("POS-OK", TIN, "0"))
                .await
                .outcome
        )
        .0,
        "910"
    );
    assert_eq!(
        rejected(
            client
                .call::<InitDevice>(&init(" ", TIN, "00"))
                .await
                .outcome
        )
        .0,
        "910"
    );
    ok(client
        .call::<InitDevice>(&init("POS-OK", TIN, "00"))
        .await
        .outcome);
    // 902 with data null: the key is not issued twice.
    let answer = raw(
        &handle,
        "/selectInitOsdcInfo",
        &[],
        &json!({"tin": TIN, "bhfId": "00", "dvcSrlNo": "POS-OK"}).to_string(),
    )
    .await;
    assert_eq!(
        (answer["resultCd"].as_str(), &answer["data"]),
        (Some("902"), &Value::Null)
    );
    handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_data_errors() {
    let handle = start(Config::default()).await;
    let hq = initialised(&handle, Profile::Oscu, TIN, "00").await;
    let key = hq.config().cmc_key.clone().unwrap();
    let headers = [("tin", TIN), ("bhfId", "00"), ("cmcKey", key.expose())];
    // 910: a required field missing names the field.
    let answer = raw(&handle, "/saveItem", &headers, r#"{"itemCd":"X"}"#).await;
    assert_eq!(answer["resultCd"], "910");
    assert!(
        answer["resultMsg"]
            .as_str()
            .unwrap()
            .contains("missing field"),
        "{answer}"
    );
    for (field, value) in [("itemTyCd", "9"), ("taxTyCd", "F"), ("itemClsCd", "12ab")] {
        let mut item = serde_json::to_value(item_request("X", "B")).unwrap();
        item[field] = json!(value);
        let answer = raw(&handle, "/saveItem", &headers, &item.to_string()).await;
        assert_eq!(answer["resultCd"], "910", "{field}");
    }
    let composition = SaveItemCompositionRequest {
        item_cd: "NOPE".into(),
        cpst_item_cd: "NADA".into(),
        cpst_qty: Qty::whole(1),
        regr_id: "a".into(),
        regr_nm: "a".into(),
    };
    assert_eq!(
        rejected(hq.call::<SaveComposition>(&composition).await.outcome).0,
        "910"
    );
    let master = StockMasterRequest {
        item_cd: "NOPE".into(),
        rsd_qty: Qty::whole(1),
        regr_id: "a".into(),
        regr_nm: "a".into(),
        modr_id: "a".into(),
        modr_nm: "a".into(),
    };
    assert_eq!(
        rejected(hq.call::<StockMaster>(&master).await.outcome).0,
        "910"
    );
    let update = UpdateImportItemRequest {
        task_cd: "NO-TASK".into(),
        dcl_de: Date8::parse("20240101").unwrap(),
        item_seq: Int(1),
        hs_cd: "1".into(),
        item_cls_cd: "50202306".into(),
        item_cd: "NOPE".into(),
        impt_item_stts_cd: "3".into(),
        remark: None,
        modr_id: "a".into(),
        modr_nm: "a".into(),
    };
    assert_eq!(
        rejected(hq.call::<UpdateImport>(&update).await.outcome).0,
        "910"
    );
    handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sale_errors() {
    let handle = start(Config::default()).await;
    let hq = initialised(&handle, Profile::Oscu, TIN, "00").await;
    register(&hq, "SODA", "B").await;
    register(&hq, "FLOUR", "A").await;
    let good = || {
        sale(
            TIN,
            "00",
            1,
            vec![
                line("SODA", priced("116", "B", "2")),
                line("FLOUR", priced("200", "A", "1")),
            ],
        )
    };
    let expect =
        |changed: SaleRequest, code: &'static str, says: &'static str| (changed, code, says);
    let add_cent = |a: Amount| {
        Amount(
            a.0.checked_add(ushuru_tax::Money::from_minor(2).unwrap())
                .unwrap(),
        )
    };
    let with_line = |change: &dyn Fn(&mut SaleItem)| {
        let mut request = good();
        change(&mut request.item_list[0]);
        request
    };
    let cases = vec![
        expect(
            with_line(&|l| l.item_cd = "GHOST".into()),
            "910",
            "not registered",
        ),
        expect(with_line(&|l| l.item_seq = Int(7)), "910", "itemSeq"),
        expect(with_line(&|l| l.tax_ty_cd = "F".into()), "910", "taxTyCd"),
        expect(
            SaleRequest {
                rcpt_ty_cd: "X".into(),
                ..good()
            },
            "910",
            "rcptTyCd",
        ),
        expect(
            SaleRequest {
                sales_ty_cd: Some("Z".into()),
                ..good()
            },
            "910",
            "salesTyCd",
        ),
        expect(
            SaleRequest {
                sales_ty_cd: Some("P".into()),
                rcpt_ty_cd: "R".into(),
                ..good()
            },
            "834",
            "label",
        ),
        expect(
            SaleRequest {
                sales_stts_cd: "99".into(),
                ..good()
            },
            "910",
            "salesSttsCd",
        ),
        expect(
            SaleRequest {
                cust_tin: Some("123".into()),
                ..good()
            },
            "910",
            "custTin",
        ),
        expect(
            SaleRequest {
                tot_item_cnt: Int(3),
                ..good()
            },
            "910",
            "totItemCnt",
        ),
        expect(
            SaleRequest {
                item_list: Vec::new(),
                tot_item_cnt: Int(0),
                ..good()
            },
            "910",
            "itemList",
        ),
        expect(
            SaleRequest {
                invc_no: Int(2),
                ..good()
            },
            "910",
            "next number",
        ),
        expect(
            SaleRequest {
                org_invc_no: Int(5),
                ..good()
            },
            "910",
            "orgInvcNo",
        ),
        expect(
            SaleRequest {
                tax_rt_b: Rate::whole(18),
                ..good()
            },
            "910",
            "taxRtB",
        ),
        expect(
            SaleRequest {
                taxbl_amt_b: add_cent(good().taxbl_amt_b),
                ..good()
            },
            "910",
            "taxblAmtB",
        ),
        expect(
            SaleRequest {
                tax_amt_a: add_cent(good().tax_amt_a),
                ..good()
            },
            "910",
            "taxAmtA",
        ),
        expect(
            SaleRequest {
                tot_taxbl_amt: add_cent(good().tot_taxbl_amt),
                ..good()
            },
            "910",
            "totTaxblAmt",
        ),
        expect(
            SaleRequest {
                tot_tax_amt: add_cent(good().tot_tax_amt),
                ..good()
            },
            "910",
            "totTaxAmt",
        ),
        expect(
            SaleRequest {
                tot_amt: add_cent(good().tot_amt),
                ..good()
            },
            "910",
            "totAmt",
        ),
        expect(with_line(&|l| l.qty = Qty::whole(0)), "910", "qty"),
        expect(
            with_line(&|l| l.sply_amt = add_cent(l.sply_amt)),
            "910",
            "splyAmt",
        ),
        expect(
            with_line(&|l| l.dc_amt = Amount::parse("1000").unwrap()),
            "910",
            "dcAmt",
        ),
        expect(with_line(&|l| l.dc_rt = Rate::whole(101)), "910", "dcRt"),
        expect(
            with_line(&|l| l.tax_amt = add_cent(l.tax_amt)),
            "910",
            "does not fit band",
        ),
    ];
    for (request, code, says) in cases {
        let (got, message) = rejected(hq.call::<SignSale>(&request).await.outcome);
        assert_eq!(got, code, "{says}: {message}");
        assert!(message.contains(says), "{says} not in {message:?}");
    }
    // Nothing of the above was signed: invoice 1 is still free.
    ok(hq.call::<SignSale>(&good()).await.outcome);
    // 994: the same number again, even with the same body.
    assert_eq!(
        rejected(hq.call::<SignSale>(&good()).await.outcome).0,
        "994"
    );
    handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credit_note_errors() {
    let handle = start(Config::default()).await;
    let hq = initialised(&handle, Profile::Oscu, TIN, "00").await;
    register(&hq, "SODA", "B").await;
    register(&hq, "FLOUR", "B").await;
    ok(hq
        .call::<SignSale>(&sale(
            TIN,
            "00",
            1,
            vec![line("SODA", priced("116", "B", "3"))],
        ))
        .await
        .outcome);
    let refund = |invc_no, original, code: &str, qty: &str| {
        credit_note(
            TIN,
            "00",
            invc_no,
            original,
            vec![line(code, priced("116", "B", qty))],
        )
    };
    for (request, says) in [
        (refund(2, 7, "SODA", "1"), "not a signed sale"),
        (refund(2, 1, "FLOUR", "1"), "not on the original"),
        (refund(2, 1, "SODA", "4"), "only 3.0000 remain"),
    ] {
        let (code, message) = rejected(hq.call::<SignSale>(&request).await.outcome);
        assert_eq!(code, "910");
        assert!(message.contains(says), "{says} not in {message:?}");
    }
    ok(hq
        .call::<SignSale>(&refund(2, 1, "SODA", "2"))
        .await
        .outcome);
    let (code, message) = rejected(
        hq.call::<SignSale>(&refund(3, 1, "SODA", "2"))
            .await
            .outcome,
    );
    assert_eq!(code, "910");
    assert!(message.contains("only 1.0000 remain"), "{message}");
    // A credit note cannot itself be credited.
    let (code, message) = rejected(
        hq.call::<SignSale>(&refund(3, 2, "SODA", "1"))
            .await
            .outcome,
    );
    assert_eq!(code, "910");
    assert!(message.contains("not a signed sale"), "{message}");
    ok(hq
        .call::<SignSale>(&refund(3, 1, "SODA", "1"))
        .await
        .outcome);
    handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lenient_mode_relaxes_numbering_and_items() {
    let handle = start(Config {
        lenient: true,
        ..Config::default()
    })
    .await;
    let hq = initialised(&handle, Profile::Oscu, TIN, "00").await;
    ok(hq
        .call::<SignSale>(&sale(
            TIN,
            "00",
            10,
            vec![line("UNREGISTERED", priced("50", "B", "1"))],
        ))
        .await
        .outcome);
    ok(hq
        .call::<SignSale>(&sale(
            TIN,
            "00",
            3,
            vec![line("UNREGISTERED", priced("50", "B", "1"))],
        ))
        .await
        .outcome);
    assert_eq!(
        rejected(
            hq.call::<SignSale>(&sale(
                TIN,
                "00",
                10,
                vec![line("X", priced("50", "B", "1"))]
            ))
            .await
            .outcome
        )
        .0,
        "994"
    );
    handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_refusals() {
    let handle = start(Config::default()).await;
    // A bad consumer secret: the token request is refused, nothing is sent.
    let mut config = client(&handle, Profile::GavaConnect, TIN, "00")
        .config()
        .clone();
    if let Some(gateway) = config.gateway.as_mut() {
        gateway.consumer_secret = Secret::new("wrong");
    }
    let bad = ushuru_kra::KraClient::new(config).unwrap();
    let request = InitRequest {
        tin: TIN.into(),
        bhf_id: "00".into(),
        dvc_srl_no: "POS".into(),
    };
    let (code, _) = rejected(bad.call::<InitDevice>(&request).await.outcome);
    assert_eq!(code, "HTTP401");
    // Without a token the gateway answers 401 and nothing is processed.
    let answer = reqwest::Client::new()
        .post(format!("{}/etims-oscu/api/v1/initialize", handle.url()))
        .json(&request)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 401);
    // A business refusal comes back as HTTP 400 "Validation failed" with the reason.
    let gateway = initialised(&handle, Profile::GavaConnect, TIN, "00").await;
    match gateway
        .call::<SignSale>(&sale(TIN, "00", 5, vec![line("X", priced("1", "B", "1"))]))
        .await
        .outcome
    {
        Outcome::Rejected { code, message } => {
            // KRA's code survives the gateway's "Validation failed" wrapper.
            assert_eq!(code.code(), "910");
            assert!(
                message.contains("Validation failed") && message.contains("910"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vscu_identity_comes_from_the_body() {
    let handle = start(Config {
        mode: Mode::Vscu,
        ..Config::default()
    })
    .await;
    initialised(&handle, Profile::Vscu, TIN, "00").await;
    let answer = raw(
        &handle,
        "/code/selectCodes",
        &[],
        r#"{"lastReqDt":"20180101000000","tin":"P051234567A","bhfId":"00"}"#,
    )
    .await;
    assert_eq!(answer["resultCd"], "000");
    let answer = raw(
        &handle,
        "/code/selectCodes",
        &[],
        r#"{"lastReqDt":"20180101000000"}"#,
    )
    .await;
    assert_eq!(answer["resultCd"], "900");
    handle.stop().await;
}
