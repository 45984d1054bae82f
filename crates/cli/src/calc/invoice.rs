//! One invoice of `ushuru calc`: its JSON read without copying, priced, and written back.

use std::borrow::Cow;
use std::cell::Cell;
use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use ushuru_tax::{
    Fixed, InvoiceTotals, LineInput, LineText, PricedLine, Pricing, TaxBand, TaxRates, Unit,
    calculate_line,
};

/// Why an invoice could not be priced, pointing at the line (1-based) and field at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvoiceError {
    pub line: Option<usize>,
    pub field: Option<Cow<'static, str>>,
    pub code: &'static str,
    pub message: String,
}

impl InvoiceError {
    fn invoice(
        code: &'static str,
        field: Option<&'static str>,
        message: impl Into<String>,
    ) -> Self {
        InvoiceError {
            line: None,
            field: field.map(Cow::Borrowed),
            code,
            message: message.into(),
        }
    }

    fn line(
        line: usize,
        field: impl Into<Cow<'static, str>>,
        code: &'static str,
        message: impl Into<String>,
    ) -> Self {
        InvoiceError {
            line: Some(line),
            field: Some(field.into()),
            code,
            message: message.into(),
        }
    }

    /// Appends `{"error":{…}}` (no newline) for invoice number `invoice` (1-based).
    pub fn write_json(&self, invoice: u64, out: &mut Vec<u8>) {
        #[derive(serde::Serialize)]
        struct Body<'a> {
            error: Fields<'a>,
        }
        #[derive(serde::Serialize)]
        struct Fields<'a> {
            invoice: u64,
            line: Option<usize>,
            field: Option<&'a str>,
            code: &'a str,
            message: &'a str,
        }
        let body = Body {
            error: Fields {
                invoice,
                line: self.line,
                field: self.field.as_deref(),
                code: self.code,
                message: &self.message,
            },
        };
        // Serialising plain strings and numbers into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, &body);
    }
}

/// The top level of an invoice: `{"lines": [ … ]}`.
struct RawInvoice<'a> {
    lines: Option<Vec<RawLine<'a>>>,
    unknown_field: Option<String>,
}

/// A line's fields as raw JSON text, checked one by one afterwards so that every error
/// can name its line and field.
#[derive(Default)]
struct RawLine<'a> {
    name: Option<&'a RawValue>,
    item_code: Option<&'a RawValue>,
    price: Option<&'a RawValue>,
    band: Option<&'a RawValue>,
    qty: Option<&'a RawValue>,
    price_is_inclusive: Option<&'a RawValue>,
    discount: Option<&'a RawValue>,
    discount_rate: Option<&'a RawValue>,
    /// The first key that is not one of the above: refused, so that a misspelt
    /// `discount_rate` can never be silently ignored.
    unknown_field: Option<String>,
}

const LINE_FIELDS: &str =
    "name, item_code, price, band, qty, price_is_inclusive, discount, discount_rate";

/// Parses and prices one invoice, appending its output line (without the newline) to `out`.
pub fn price_invoice(json: &[u8], rates: &TaxRates, out: &mut Vec<u8>) -> Result<(), InvoiceError> {
    let raw_lines = parse(json)?;
    let mut lines = Vec::with_capacity(raw_lines.len());
    for (index, raw) in raw_lines.iter().enumerate() {
        lines.push(price_line(index + 1, raw, rates)?);
    }
    let totals = InvoiceTotals::from_lines(&lines, rates)
        .map_err(|e| InvoiceError::invoice("OUT_OF_RANGE", None, e.to_string()))?;
    write_invoice(&raw_lines, &lines, &totals, out);
    Ok(())
}

fn parse(json: &[u8]) -> Result<Vec<RawLine<'_>>, InvoiceError> {
    // One UTF-8 check of the whole invoice, so that the parser need not check each string.
    let json = std::str::from_utf8(json).map_err(|e| {
        InvoiceError::invoice(
            "INVALID_JSON",
            None,
            format!("not valid JSON: not UTF-8 ({e})"),
        )
    })?;
    // Which line is being read (1-based; 0 outside the lines), to name it in an error.
    let current_line = Cell::new(0);
    let mut deserializer = serde_json::Deserializer::from_str(json);
    let invoice = deserializer
        .deserialize_map(InvoiceVisitor {
            current_line: &current_line,
        })
        .and_then(|invoice| deserializer.end().map(|()| invoice))
        .map_err(|e| match (e.classify(), current_line.get()) {
            (serde_json::error::Category::Data, 0) => InvoiceError::invoice(
                "INVALID_INVOICE",
                None,
                format!("{e}; an invoice is {{\"lines\":[…]}}"),
            ),
            (serde_json::error::Category::Data, line) => InvoiceError {
                line: Some(line),
                field: None,
                code: "INVALID_TYPE",
                message: format!("line {line} is not a line object: {e}"),
            },
            _ => InvoiceError::invoice("INVALID_JSON", None, format!("not valid JSON: {e}")),
        })?;
    if let Some(field) = invoice.unknown_field {
        return Err(InvoiceError {
            line: None,
            message: format!(
                "the invoice has an unknown field {field:?}; its only field is \"lines\""
            ),
            field: Some(Cow::Owned(field)),
            code: "UNKNOWN_FIELD",
        });
    }
    match invoice.lines {
        Some(lines) => Ok(lines),
        None => Err(InvoiceError::invoice(
            "MISSING_FIELD",
            Some("lines"),
            "the invoice has no \"lines\" array",
        )),
    }
}

struct InvoiceVisitor<'c> {
    current_line: &'c Cell<usize>,
}

impl<'de> Visitor<'de> for InvoiceVisitor<'_> {
    type Value = RawInvoice<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an invoice object {\"lines\": [ … ]}")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut invoice = RawInvoice {
            lines: None,
            unknown_field: None,
        };
        while let Some(key) = map.next_key::<Key<'de>>()? {
            match key.0.as_ref() {
                "lines" if invoice.lines.is_some() => {
                    return Err(de::Error::duplicate_field("lines"));
                }
                "lines" => {
                    invoice.lines = Some(map.next_value_seed(LinesSeed {
                        current_line: self.current_line,
                    })?)
                }
                other => {
                    invoice
                        .unknown_field
                        .get_or_insert_with(|| other.to_owned());
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(invoice)
    }
}

/// A map key, borrowed from the input unless it contains escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

struct LinesSeed<'c> {
    current_line: &'c Cell<usize>,
}

impl<'de> de::DeserializeSeed<'de> for LinesSeed<'_> {
    type Value = Vec<RawLine<'de>>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for LinesSeed<'_> {
    type Value = Vec<RawLine<'de>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"lines\" to be an array of line objects")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut lines = Vec::with_capacity(seq.size_hint().unwrap_or(8));
        loop {
            self.current_line.set(lines.len() + 1);
            match seq.next_element::<RawLine<'de>>()? {
                Some(line) => lines.push(line),
                None => break,
            }
        }
        self.current_line.set(0);
        Ok(lines)
    }
}

impl<'de> de::Deserialize<'de> for RawLine<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(LineVisitor)
    }
}

struct LineVisitor;

impl<'de> Visitor<'de> for LineVisitor {
    type Value = RawLine<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a line object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut line = RawLine::default();
        while let Some(key) = map.next_key::<Key<'de>>()? {
            let slot = match key.0.as_ref() {
                "name" => &mut line.name,
                "item_code" => &mut line.item_code,
                "price" => &mut line.price,
                "band" => &mut line.band,
                "qty" => &mut line.qty,
                "price_is_inclusive" => &mut line.price_is_inclusive,
                "discount" => &mut line.discount,
                "discount_rate" => &mut line.discount_rate,
                other => {
                    line.unknown_field.get_or_insert_with(|| other.to_owned());
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            if slot.is_some() {
                return Err(de::Error::custom(format_args!(
                    "a line has the field `{}` twice",
                    key.0
                )));
            }
            *slot = Some(map.next_value()?);
        }
        Ok(line)
    }
}

/// A JSON value's text: a string's contents (unescaped when needed), or a number's
/// literal digits, which stay exact because they are never turned into a float.
enum Scalar<'a> {
    Text(Cow<'a, str>),
    /// A JSON string whose escapes do not make a valid string (a lone surrogate `\ud800`).
    BadText,
    Number(&'a str),
    Null,
    Other,
}

fn scalar(raw: &RawValue) -> Scalar<'_> {
    let text = raw.get();
    match text.as_bytes().first() {
        // The raw value is valid JSON, so a string without a backslash is its quotes around
        // its contents; only strings with escapes need decoding.
        Some(b'"') if !text.contains('\\') => Scalar::Text(Cow::Borrowed(&text[1..text.len() - 1])),
        Some(b'"') => serde_json::from_str::<String>(text)
            .map_or(Scalar::BadText, |s| Scalar::Text(Cow::Owned(s))),
        Some(b'-' | b'0'..=b'9') => Scalar::Number(text),
        Some(b'n') => Scalar::Null,
        _ => Scalar::Other,
    }
}

fn missing(line: usize, field: &'static str, what: &str) -> InvoiceError {
    InvoiceError::line(
        line,
        field,
        "MISSING_FIELD",
        format!("line {line} has no {field}: {what}"),
    )
}

fn wrong_type(line: usize, field: &'static str, what: &str) -> InvoiceError {
    InvoiceError::line(
        line,
        field,
        "INVALID_TYPE",
        format!("line {line}: {field} must be {what}"),
    )
}

fn bad_text(line: usize, field: &'static str) -> InvoiceError {
    InvoiceError::line(
        line,
        field,
        "INVALID_STRING",
        format!(
            "line {line}: {field} has an escape that is not a character (a lone UTF-16 surrogate)"
        ),
    )
}

/// A decimal field: a JSON number or a string holding a decimal. `null` means absent.
fn decimal_text<'a>(
    line: usize,
    field: &'static str,
    raw: Option<&'a RawValue>,
) -> Result<Option<Cow<'a, str>>, InvoiceError> {
    match raw.map(scalar) {
        None | Some(Scalar::Null) => Ok(None),
        Some(Scalar::Number(digits)) => Ok(Some(Cow::Borrowed(digits))),
        Some(Scalar::Text(text)) => Ok(Some(text)),
        Some(Scalar::BadText) => Err(bad_text(line, field)),
        Some(Scalar::Other) => Err(wrong_type(
            line,
            field,
            "a number or a decimal string such as \"12.50\"",
        )),
    }
}

fn required_text<'a>(
    line: usize,
    field: &'static str,
    raw: Option<&'a RawValue>,
) -> Result<Cow<'a, str>, InvoiceError> {
    match raw.map(scalar) {
        None | Some(Scalar::Null) => Err(missing(line, field, "it is required")),
        Some(Scalar::Text(text)) => Ok(text),
        Some(Scalar::BadText) => Err(bad_text(line, field)),
        Some(_) => Err(wrong_type(line, field, "a string")),
    }
}

fn price_line(
    line: usize,
    raw: &RawLine<'_>,
    rates: &TaxRates,
) -> Result<PricedLine, InvoiceError> {
    if let Some(field) = &raw.unknown_field {
        return Err(InvoiceError::line(
            line,
            field.clone(),
            "UNKNOWN_FIELD",
            format!("line {line} has an unknown field {field:?}; the fields are {LINE_FIELDS}"),
        ));
    }
    for (field, value) in [("name", raw.name), ("item_code", raw.item_code)] {
        if required_text(line, field, value)?.trim().is_empty() {
            return Err(InvoiceError::line(
                line,
                field,
                "EMPTY_FIELD",
                format!("line {line}: {field} is empty"),
            ));
        }
    }
    let band = required_text(line, "band", raw.band)?;
    let price = decimal_text(line, "price", raw.price)?
        .ok_or_else(|| missing(line, "price", "the unit price is required"))?;
    let qty = decimal_text(line, "qty", raw.qty)?
        .ok_or_else(|| missing(line, "qty", "the quantity is required"))?;
    let pricing = match raw.price_is_inclusive.map(RawValue::get) {
        Some("true") => Pricing::VatInclusive,
        Some("false") => Pricing::VatExclusive,
        None | Some("null") => {
            return Err(missing(
                line,
                "price_is_inclusive",
                "say true (price includes VAT) or false",
            ));
        }
        Some(_) => return Err(wrong_type(line, "price_is_inclusive", "true or false")),
    };
    let discount = decimal_text(line, "discount", raw.discount)?;
    let discount_rate = decimal_text(line, "discount_rate", raw.discount_rate)?;
    let text = LineText {
        price: &price,
        band: &band,
        qty: &qty,
        pricing,
        discount: discount.as_deref(),
        discount_rate: discount_rate.as_deref(),
    };
    LineInput::parse(&text)
        .and_then(|input| calculate_line(&input, rates))
        .map_err(|e| InvoiceError {
            line: Some(line),
            field: e.field().map(|f| Cow::Borrowed(f.name())),
            code: e.code(),
            message: format!("line {line}: {e}"),
        })
}

fn write_invoice(
    raw: &[RawLine<'_>],
    lines: &[PricedLine],
    totals: &InvoiceTotals,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(b"{\"lines\":[");
    for (index, (raw, line)) in raw.iter().zip(lines).enumerate() {
        if index > 0 {
            out.push(b',');
        }
        // Both were checked to be JSON strings; their raw text is valid JSON as it is.
        out.extend_from_slice(b"{\"itemCd\":");
        out.extend_from_slice(raw.item_code.map_or("\"\"", RawValue::get).as_bytes());
        out.extend_from_slice(b",\"itemNm\":");
        out.extend_from_slice(raw.name.map_or("\"\"", RawValue::get).as_bytes());
        field(out, "qty", line.qty);
        field(out, "uprc", line.uprc);
        field(out, "splyAmt", line.sply_amt);
        field(out, "dcRt", line.dc_rt);
        field(out, "dcAmt", line.dc_amt);
        field(out, "taxblAmt", line.taxbl_amt);
        field(out, "taxAmt", line.tax_amt);
        field(out, "totAmt", line.tot_amt);
        out.extend_from_slice(b",\"taxTyCd\":\"");
        out.extend_from_slice(line.tax_ty_cd.code().as_bytes());
        out.extend_from_slice(b"\"}");
    }
    out.extend_from_slice(b"],\"totals\":{\"totItemCnt\":");
    out.extend_from_slice(totals.tot_item_cnt.to_string().as_bytes());
    field(out, "totTaxblAmt", totals.tot_taxbl_amt);
    field(out, "totTaxAmt", totals.tot_tax_amt);
    field(out, "totAmt", totals.tot_amt);
    for band in TaxBand::ALL {
        field(
            out,
            BAND_FIELDS[0][band.index()],
            totals.band(band).taxbl_amt,
        );
    }
    for band in TaxBand::ALL {
        field(
            out,
            BAND_FIELDS[1][band.index()],
            totals.band(band).tax_rt.percent(),
        );
    }
    for band in TaxBand::ALL {
        field(out, BAND_FIELDS[2][band.index()], totals.band(band).tax_amt);
    }
    out.extend_from_slice(b"}}");
}

const BAND_FIELDS: [[&str; 5]; 3] = [
    [
        "taxblAmtA",
        "taxblAmtB",
        "taxblAmtC",
        "taxblAmtD",
        "taxblAmtE",
    ],
    ["taxRtA", "taxRtB", "taxRtC", "taxRtD", "taxRtE"],
    ["taxAmtA", "taxAmtB", "taxAmtC", "taxAmtD", "taxAmtE"],
];

/// `,"name":"value"` with the value at its fixed scale.
#[inline(always)]
fn field<U: Unit>(out: &mut Vec<u8>, name: &str, value: Fixed<U>) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":\"");
    value.write_to(out);
    out.push(b'"');
}
