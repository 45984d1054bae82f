//! `ushuru calc` run as a real process: formats, every error path, exit codes, ordering
//! across chunks, and the reference vectors end to end.

// A test (or bench) crate: a panic in a helper is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use serde_json::{Value, json};

fn ushuru(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ushuru"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ushuru starts");
    let mut input = child.stdin.take().expect("stdin");
    let stdin = stdin.to_vec();
    // Write from another thread: a large output would otherwise fill the pipe and block.
    // A process that exits without reading (a usage error) closes the pipe: not a failure.
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let output = child.wait_with_output().expect("ushuru runs");
    writer.join().expect("writer");
    output
}

fn calc(stdin: &str) -> (Vec<Value>, i32) {
    let output = ushuru(&["calc"], stdin.as_bytes());
    (
        parse_lines(&output.stdout),
        output.status.code().expect("exit code"),
    )
}

fn parse_lines(stdout: &[u8]) -> Vec<Value> {
    String::from_utf8(stdout.to_vec())
        .expect("UTF-8 output")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect()
}

fn line(price: Value, band: &str, qty: Value) -> Value {
    json!({"name": "Soda", "item_code": "SODA-500", "price": price, "band": band, "qty": qty, "price_is_inclusive": true})
}

fn repo_file(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

#[test]
fn one_pretty_printed_invoice() {
    let input = std::fs::read_to_string(repo_file("examples/invoice.json")).unwrap();
    let (out, code) = calc(&input);
    assert_eq!(code, 0);
    assert_eq!(out.len(), 1);
    // The README shows this output: it must stay what calc really prints.
    let shown = std::fs::read_to_string(repo_file("examples/invoice.priced.jsonl")).unwrap();
    assert_eq!(out, parse_lines(shown.as_bytes()));
    let readme = std::fs::read_to_string(repo_file("README.md")).unwrap();
    assert!(
        readme.contains(shown.trim()),
        "README.md must show the real output of examples/invoice.json"
    );
    let totals = &out[0]["totals"];
    assert_eq!(totals["totItemCnt"], 4);
    assert_eq!(totals["totAmt"], "5885.46");
    assert_eq!(totals["taxAmtB"], "451.31");
    assert_eq!(totals["taxRtE"], "8.00");
}

#[test]
fn input_file_and_stdin_agree() {
    let path = repo_file("examples/invoice.json");
    let from_file = ushuru(&["calc", "--input", path.to_str().unwrap()], b"");
    let from_stdin = ushuru(&["calc"], &std::fs::read(&path).unwrap());
    assert!(from_file.status.success());
    assert_eq!(from_file.stdout, from_stdin.stdout);
}

#[test]
fn json_lines_with_numbers_as_strings_or_numbers() {
    let input = [
        json!({"lines": [line(json!("5800"), "B", json!("1"))]}),
        json!({"lines": [line(json!(5800), "b", json!(1))]}),
        json!({"lines": [line(json!(5.8e3), " B ", json!(1.0))]}),
    ]
    .map(|v| v.to_string())
    .join("\r\n");
    let (out, code) = calc(&format!("\n{input}\n\n"));
    assert_eq!(code, 0);
    assert_eq!(out.len(), 3, "blank lines are not invoices");
    for result in &out {
        assert_eq!(result["lines"][0]["taxblAmt"], "5000.00");
        assert_eq!(result["lines"][0]["taxAmt"], "800.00");
        assert_eq!(result["lines"][0]["taxTyCd"], "B");
    }
}

#[test]
fn a_float_looking_number_stays_exact() {
    // The digits are read as written, never through a float: 0.125 rounds HALF_UP to 0.13.
    let (out, code) = calc(
        r#"{"lines":[{"name":"x","item_code":"y","price":0.125,"band":"B","qty":0.1,"price_is_inclusive":true}]}"#,
    );
    assert_eq!(code, 0);
    assert_eq!(out[0]["lines"][0]["uprc"], "0.13");
    assert_eq!(out[0]["lines"][0]["totAmt"], "0.01");
}

#[test]
fn names_with_escapes_pass_through() {
    let mut l = line(json!("1"), "A", json!("1"));
    l["name"] = json!("Chai \"Kenya\" 50g\n\u{00e9}\u{1F375}");
    l["item_code"] = json!("A\\B/C");
    let (out, code) = calc(&json!({"lines": [l]}).to_string());
    assert_eq!(code, 0);
    assert_eq!(
        out[0]["lines"][0]["itemNm"],
        "Chai \"Kenya\" 50g\n\u{00e9}\u{1F375}"
    );
    assert_eq!(out[0]["lines"][0]["itemCd"], "A\\B/C");
}

#[test]
fn optional_discounts_may_be_null() {
    let mut l = line(json!("100"), "B", json!("1"));
    l["discount"] = Value::Null;
    l["discount_rate"] = json!("10");
    let (out, code) = calc(&json!({"lines": [l]}).to_string());
    assert_eq!(code, 0);
    assert_eq!(out[0]["lines"][0]["dcAmt"], "10.00");
    assert_eq!(out[0]["lines"][0]["dcRt"], "10.00");
}

/// Each invalid invoice gets its error on its own line, and the stream goes on.
#[test]
fn every_invalid_invoice_is_reported_and_the_rest_still_priced() {
    let valid = json!({"lines": [line(json!("100"), "B", json!(1))]}).to_string();
    let with = |change: &dyn Fn(&mut Value)| {
        let mut invoice = json!({"lines": [line(json!("100"), "B", json!(1)), line(json!("100"), "B", json!(1))]});
        change(&mut invoice["lines"][1]);
        invoice.to_string()
    };
    let remove =
        |field: &'static str| move |l: &mut Value| drop(l.as_object_mut().unwrap().remove(field));
    let set = |field: &'static str, value: Value| move |l: &mut Value| l[field] = value.clone();
    // (input, expected line, field, code)
    let cases: Vec<(String, Value, Value, &str)> = vec![
        ("{\"lines\": [}".into(), Value::Null, Value::Null, "INVALID_JSON"),
        ("not json".into(), Value::Null, Value::Null, "INVALID_JSON"),
        ("[1, 2]".into(), Value::Null, Value::Null, "INVALID_INVOICE"),
        ("{}".into(), Value::Null, json!("lines"), "MISSING_FIELD"),
        ("{\"lines\": 3}".into(), Value::Null, Value::Null, "INVALID_INVOICE"),
        ("{\"lines\": [], \"lines\": []}".into(), Value::Null, Value::Null, "INVALID_INVOICE"),
        ("{\"lines\": [], \"customer\": \"x\"}".into(), Value::Null, json!("customer"), "UNKNOWN_FIELD"),
        ("{\"lines\": [7]}".into(), json!(1), Value::Null, "INVALID_TYPE"),
        (with(&set("discount_pct", json!("5"))), json!(2), json!("discount_pct"), "UNKNOWN_FIELD"),
        (with(&remove("name")), json!(2), json!("name"), "MISSING_FIELD"),
        (with(&remove("item_code")), json!(2), json!("item_code"), "MISSING_FIELD"),
        (with(&remove("price")), json!(2), json!("price"), "MISSING_FIELD"),
        (with(&remove("band")), json!(2), json!("band"), "MISSING_FIELD"),
        (with(&remove("qty")), json!(2), json!("qty"), "MISSING_FIELD"),
        (with(&remove("price_is_inclusive")), json!(2), json!("price_is_inclusive"), "MISSING_FIELD"),
        (with(&set("name", json!("  "))), json!(2), json!("name"), "EMPTY_FIELD"),
        (with(&set("name", json!(5))), json!(2), json!("name"), "INVALID_TYPE"),
        (with(&set("price", json!(true))), json!(2), json!("price"), "INVALID_TYPE"),
        (with(&set("qty", json!([1]))), json!(2), json!("qty"), "INVALID_TYPE"),
        (with(&set("price_is_inclusive", json!("yes"))), json!(2), json!("price_is_inclusive"), "INVALID_TYPE"),
        (with(&set("price", json!("12,50"))), json!(2), json!("price"), "NOT_A_NUMBER"),
        (with(&set("price", json!("-1"))), json!(2), json!("price"), "NEGATIVE_PRICE"),
        (with(&set("qty", json!(0))), json!(2), json!("qty"), "NON_POSITIVE_QUANTITY"),
        (with(&set("qty", json!("0.00004"))), json!(2), json!("qty"), "NON_POSITIVE_QUANTITY"),
        (with(&set("band", json!("F"))), json!(2), json!("band"), "UNKNOWN_TAX_BAND"),
        (with(&set("price", json!("1e25"))), json!(2), json!("price"), "OUT_OF_RANGE"),
        (with(&set("discount", json!("200"))), json!(2), json!("discount"), "DISCOUNT_EXCEEDS_LINE"),
        (with(&set("discount", json!("-1"))), json!(2), json!("discount"), "NEGATIVE_DISCOUNT"),
        (with(&set("discount_rate", json!("10.125"))), json!(2), json!("discount_rate"), "TOO_PRECISE"),
        (with(&set("discount_rate", json!(101))), json!(2), json!("discount_rate"), "DISCOUNT_RATE_OUT_OF_BOUNDS"),
        (
            with(&|l: &mut Value| {
                l["discount"] = json!("1");
                l["discount_rate"] = json!("1");
            }),
            json!(2),
            json!("discount"),
            "BOTH_DISCOUNT_FORMS",
        ),
        (
            json!({"lines": [line(json!("99999999999999999999"), "A", json!(1)), line(json!("1"), "A", json!(1))]}).to_string(),
            Value::Null,
            Value::Null,
            "OUT_OF_RANGE",
        ),
    ];
    let mut input = String::new();
    for (bad, ..) in &cases {
        input.push_str(&valid);
        input.push('\n');
        input.push_str(bad);
        input.push('\n');
    }
    input.push_str(&valid);
    let (out, code) = calc(&input);
    assert_eq!(code, 1);
    assert_eq!(out.len(), cases.len() * 2 + 1);
    for (index, (bad, line, field, code)) in cases.iter().enumerate() {
        let number = index * 2 + 2; // invoices are numbered from 1
        assert_eq!(
            out[number - 2]["totals"]["totAmt"],
            "100.00",
            "the valid invoice before {bad}"
        );
        let error = &out[number - 1]["error"];
        assert_eq!(error["code"], *code, "{bad}: {error}");
        assert_eq!(error["invoice"], number, "{bad}");
        assert_eq!(error["line"], *line, "{bad}: {error}");
        assert_eq!(error["field"], *field, "{bad}: {error}");
        assert!(
            error["message"].as_str().is_some_and(|m| m.len() > 10),
            "{bad}: {error}"
        );
    }
    assert_eq!(out.last().unwrap()["totals"]["totAmt"], "100.00");
}

#[test]
fn invalid_utf8_is_an_error_of_its_invoice_only() {
    let valid = json!({"lines": [line(json!("1"), "A", json!(1))]}).to_string();
    let mut input = valid.clone().into_bytes();
    input.extend_from_slice(b"\n{\"lines\":[{\"name\":\"\xff\"}]}\n");
    input.extend_from_slice(valid.as_bytes());
    let output = ushuru(&["calc"], &input);
    let out = parse_lines(&output.stdout);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(out.len(), 3);
    assert_eq!(out[1]["error"]["code"], "INVALID_JSON");
    assert_eq!(out[1]["error"]["invoice"], 2);
    assert!(out[2].get("totals").is_some());
}

#[test]
fn several_documents_and_a_broken_one() {
    let pretty =
        serde_json::to_string_pretty(&json!({"lines": [line(json!("58"), "B", json!(1))]}))
            .unwrap();
    let (out, code) = calc(&format!("{pretty}\n{pretty}\n"));
    assert_eq!((out.len(), code), (2, 0));
    assert_eq!(out[1]["totals"]["totTaxAmt"], "8.00");

    let (out, code) = calc(&format!("{pretty}\n{{\n  \"lines\": [\n"));
    assert_eq!((out.len(), code), (2, 1));
    assert_eq!(out[1]["error"]["code"], "INVALID_JSON");
    assert_eq!(out[1]["error"]["invoice"], 2);
}

#[test]
fn empty_input_prices_nothing() {
    for input in ["", "\n\n  \n"] {
        let (out, code) = calc(input);
        assert_eq!((out.len(), code), (0, 0));
    }
}

#[test]
fn an_empty_invoice_totals_to_zero() {
    let (out, code) = calc("{\"lines\": []}");
    assert_eq!(code, 0);
    assert_eq!(out[0]["totals"]["totItemCnt"], 0);
    assert_eq!(out[0]["totals"]["totAmt"], "0.00");
}

/// Many chunks and several workers: output order, invoice numbers and errors must be
/// exactly those of a single worker.
#[test]
fn order_and_numbering_survive_chunking_and_workers() {
    let mut input = String::new();
    for n in 1..=30_000u32 {
        let invoice = if n.is_multiple_of(997) {
            json!({"lines": [line(json!("-1"), "B", json!(1))]})
        } else {
            json!({"lines": [line(json!(format!("{n}.{:02}", n % 100)), "B", json!(n % 7 + 1))]})
        };
        input.push_str(&invoice.to_string());
        input.push('\n');
    }
    assert!(input.len() > 3 << 20, "must span several 1 MiB chunks");
    let outputs: Vec<Output> = ["1", "3"]
        .iter()
        .map(|jobs| ushuru(&["calc", "--jobs", jobs], input.as_bytes()))
        .collect();
    assert_eq!(outputs[0].stdout, outputs[1].stdout);
    let out = parse_lines(&outputs[1].stdout);
    assert_eq!(outputs[1].status.code(), Some(1));
    assert_eq!(out.len(), 30_000);
    for (index, result) in out.iter().enumerate() {
        let n = index as u32 + 1;
        if n.is_multiple_of(997) {
            assert_eq!(result["error"]["invoice"], n);
        } else {
            assert_eq!(result["lines"][0]["uprc"], format!("{n}.{:02}", n % 100));
        }
    }
}

#[test]
fn rates_can_be_overridden() {
    let input = json!({"lines": [line(json!("110"), "E", json!(1))]}).to_string();
    let output = ushuru(&["calc", "--rate", "E=10"], input.as_bytes());
    let out = parse_lines(&output.stdout);
    assert_eq!(out[0]["lines"][0]["taxAmt"], "10.00");
    assert_eq!(out[0]["totals"]["taxRtE"], "10.00");

    for bad in ["E", "F=10", "E=ten", "E=101"] {
        let output = ushuru(&["calc", "--rate", bad], input.as_bytes());
        assert_eq!(output.status.code(), Some(2), "{bad}");
        assert!(
            String::from_utf8_lossy(&output.stderr).contains("--rate"),
            "{bad}"
        );
    }
}

#[test]
fn an_unreadable_input_exits_2_with_a_message() {
    let output = ushuru(&["calc", "--input", "/nonexistent/invoices.jsonl"], b"");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot open --input /nonexistent/invoices.jsonl"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty());
}

/// The example in `ushuru calc --help` is real output.
#[test]
fn help_explains_and_its_example_is_true() {
    let output = ushuru(&["calc", "--help"], b"");
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for words in [
        "JSON Lines",
        "price_is_inclusive",
        "discount_rate",
        "\"error\"",
        "EXIT STATUS",
        "--input",
        "--rate",
    ] {
        assert!(help.contains(words), "help lacks {words}");
    }
    let mut example = help
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("$ echo"));
    let command = example.next().expect("an example command");
    let shown = example.next().expect("its output").trim();
    let input = command.split('\'').nth(1).expect("quoted input");
    let (out, _) = calc(input);
    assert_eq!(out[0], serde_json::from_str::<Value>(shown).unwrap());
}

/// All 400 reference invoices, as JSON Lines through the real binary.
#[test]
fn reference_vectors_end_to_end() {
    let path = repo_file("crates/tax/tests/data/tax-vectors.json");
    let vectors: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let invoices = vectors["invoices"].as_array().unwrap();
    let input: String = invoices
        .iter()
        .map(|invoice| {
            let lines: Vec<&Value> = invoice["lines"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| &l["input"])
                .collect();
            json!({"lines": lines}).to_string() + "\n"
        })
        .collect();
    let (out, code) = calc(&input);
    assert_eq!(code, 0);
    assert_eq!(out.len(), invoices.len());
    let number = |v: &Value| {
        let text = v
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| v.to_string());
        text.parse::<rust_decimal::Decimal>().unwrap()
    };
    for (n, (invoice, result)) in invoices.iter().zip(&out).enumerate() {
        let expected_lines = invoice["lines"].as_array().unwrap();
        let got_lines = result["lines"].as_array().unwrap();
        assert_eq!(expected_lines.len(), got_lines.len());
        for (m, (vector, got)) in expected_lines.iter().zip(got_lines).enumerate() {
            for (field, expected) in vector["expect"].as_object().unwrap() {
                assert_eq!(
                    number(&got[field]),
                    number(expected),
                    "invoice {n} line {m} {field}"
                );
            }
        }
        for (field, expected) in invoice["totals"].as_object().unwrap() {
            assert_eq!(
                number(&result["totals"][field]),
                number(expected),
                "invoice {n} {field}"
            );
        }
    }
}

/// Waits for a child with a deadline: a hang is a failure, not a stuck test run.
fn wait_with_deadline(child: &mut std::process::Child, seconds: u64) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("ushuru calc did not finish within {seconds} s");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// An invoice of `count` lines, one JSON line.
fn big_invoice(count: usize) -> String {
    let lines: Vec<Value> = (0..count)
        .map(|i| line(json!(format!("{}.50", i % 1000)), "B", json!(1)))
        .collect();
    json!({ "lines": lines }).to_string()
}

#[test]
fn lines_longer_than_a_chunk_anywhere() {
    let long = big_invoice(15_000);
    assert!(long.len() > 1 << 20, "must exceed the 1 MiB chunk");
    let short = json!({"lines": [line(json!("10"), "B", json!(1))]}).to_string();
    for input in [
        format!("{short}\n{long}\n{short}\n"),
        format!("{long}\n{short}\n{long}"),
    ] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ushuru"))
            .arg("calc")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
        let mut stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut out = Vec::new();
            std::io::Read::read_to_end(&mut stdout, &mut out).map(|_| out)
        });
        let status = wait_with_deadline(&mut child, 60);
        writer.join().unwrap().unwrap();
        let out = parse_lines(&reader.join().unwrap().unwrap());
        assert!(status.success());
        assert_eq!(
            out.len(),
            3,
            "every invoice priced, none lost to document mode"
        );
        assert!(out.iter().all(|o| o.get("totals").is_some()));
    }
}

#[test]
fn a_reader_that_stops_early_does_not_hang_the_pipeline() {
    let input = big_invoice(3) + "\n";
    let input = input.repeat(40_000); // ~20 MB: many chunks
    let mut child = Command::new(env!("CARGO_BIN_EXE_ushuru"))
        .args(["calc", "--jobs", "2"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut first).unwrap();
    assert!(first.contains("totals"));
    drop(stdout); // like `| head -1`
    let status = wait_with_deadline(&mut child, 60);
    writer.join().unwrap();
    assert!(
        status.success(),
        "a closed pipe is not an error of ours: {status}"
    );
}

#[test]
fn a_failing_output_exits_2_with_a_message() {
    if !std::path::Path::new("/dev/full").exists() {
        return;
    }
    let input = (big_invoice(3) + "\n").repeat(20_000);
    let mut child = Command::new(env!("CARGO_BIN_EXE_ushuru"))
        .arg("calc")
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create("/dev/full").unwrap())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    let status = wait_with_deadline(&mut child, 60);
    writer.join().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(2));
    assert!(stderr.contains("writing results"), "{stderr}");
}

#[test]
fn odd_but_valid_inputs() {
    // A byte-order mark before JSON Lines.
    let valid = json!({"lines": [line(json!("10"), "B", json!(1))]}).to_string();
    let output = ushuru(&["calc"], format!("\u{feff}{valid}\n{valid}\n").as_bytes());
    assert_eq!(
        (parse_lines(&output.stdout).len(), output.status.code()),
        (2, Some(0))
    );

    // A number where a line should be, even one beyond any float.
    let (out, code) = calc("{\"lines\":[1e400]}\n{\"lines\":[{\"name\":\"x\"}, \"y\"]}");
    assert_eq!(code, 1);
    assert_eq!(
        (
            out[0]["error"]["code"].as_str(),
            out[0]["error"]["line"].as_u64()
        ),
        (Some("INVALID_TYPE"), Some(1))
    );
    assert_eq!(
        (
            out[1]["error"]["code"].as_str(),
            out[1]["error"]["line"].as_u64()
        ),
        (Some("INVALID_TYPE"), Some(2))
    );

    // A lone surrogate escape is a broken string, not a wrong type.
    let (out, _) = calc(
        r#"{"lines":[{"name":"\ud800","item_code":"y","price":1,"band":"B","qty":1,"price_is_inclusive":true}]}"#,
    );
    assert_eq!(out[0]["error"]["code"], "INVALID_STRING");
    assert_eq!(out[0]["error"]["field"], "name");
}
