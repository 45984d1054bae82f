//! `GET /openapi.json` and `GET /docs`: the OpenAPI document, and a page rendered from it
//! on the server. The page is one self-contained HTML file with inline CSS and no script:
//! Ushuru runs where there is often no network to fetch a viewer from, so a browser must be
//! able to show it with nothing else.

use std::fmt::Write;
use std::sync::Arc;

use axum::body::Bytes;
use axum::response::{Html, IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::Value;
use utoipa::openapi::OpenApi;

/// The document and its page, made once per router.
pub(crate) struct Docs {
    api: OpenApi,
    html: Bytes,
}

impl Docs {
    pub(crate) fn new(api: OpenApi) -> Docs {
        // The page is rendered from the JSON form, the very one /openapi.json serves.
        let html = match serde_json::to_value(&api) {
            Ok(document) => page_of(&document),
            Err(error) => format!(
                "<!doctype html><title>API</title><p>The API document could not be rendered: {}</p>",
                escape(&error.to_string())
            ),
        };
        Docs {
            api,
            html: Bytes::from(html),
        }
    }
}

#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "reference",
    summary = "This API as an OpenAPI 3.1 document",
    description = "Generated from the code that serves the endpoints. No API key needed.",
    responses(
        (status = 200, description = "The OpenAPI document.", body = Object, content_type = "application/json"),
    ),
)]
pub(crate) async fn openapi_json(Extension(docs): Extension<Arc<Docs>>) -> Response {
    Json(&docs.api).into_response()
}

#[utoipa::path(
    get,
    path = "/docs",
    tag = "reference",
    summary = "This API as a page to read",
    description = "The OpenAPI document rendered as one HTML page without scripts or \
        outside resources, so it reads offline. No API key needed.",
    responses(
        (status = 200, description = "The page.", body = String, content_type = "text/html"),
    ),
)]
pub(crate) async fn page(Extension(docs): Extension<Arc<Docs>>) -> Html<Bytes> {
    Html(docs.html.clone())
}

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

const STYLE: &str = "
body{font:15px/1.5 system-ui,sans-serif;color:#1d232a;background:#fafafa;margin:0}
main{max-width:60rem;margin:0 auto;padding:1rem 1.5rem 4rem}
h1{margin-bottom:0}h1 small{font-size:1rem;color:#68707a;font-weight:normal}
h2{margin-top:2.5rem;border-bottom:2px solid #d5d9de;padding-bottom:.2rem}
h4{margin:1rem 0 .3rem}
section.op{background:#fff;border:1px solid #d5d9de;border-radius:6px;padding:.2rem 1rem .8rem;margin:1rem 0}
code{font:13px ui-monospace,monospace;background:#eef0f2;padding:0 .2rem;border-radius:3px}
h3 code{font-size:15px;background:none}
.method{display:inline-block;min-width:3.6rem;text-align:center;font:bold 12px ui-monospace,monospace;color:#fff;border-radius:3px;padding:.15rem .3rem;margin-right:.4rem}
.get{background:#2f6fb5}.post{background:#2f8a4c}.put,.patch{background:#a66a00}.delete{background:#b33a3a}
table{border-collapse:collapse;width:100%;margin:.3rem 0}
th,td{text-align:left;vertical-align:top;border-bottom:1px solid #e3e6e9;padding:.25rem .5rem}
th{font-size:13px;color:#68707a;font-weight:600}
.muted{color:#68707a}nav ul{columns:2}
";

/// The whole page.
fn page_of(doc: &Value) -> String {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let title = text(&doc["info"]["title"]);
    let mut out = String::new();
    let _ = write!(
        out,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>{} API</title><style>{STYLE}</style></head><body><main>\
         <h1>{} API <small>{}</small></h1>{}\
         <p class=\"muted\">The same reference as an OpenAPI {} document: \
         <a href=\"/openapi.json\"><code>/openapi.json</code></a>.</p>",
        escape(&title),
        escape(&title),
        escape(&text(&doc["info"]["version"])),
        prose(&text(&doc["info"]["description"])),
        escape(&text(&doc["openapi"])),
    );

    if let Some(schemes) = doc["components"]["securitySchemes"].as_object() {
        out.push_str("<h2 id=\"authentication\">Authentication</h2><table>");
        for (name, scheme) in schemes {
            let _ = write!(
                out,
                "<tr><td><code>{}</code></td><td>{}</td></tr>",
                escape(name),
                prose(&text(&scheme["description"]))
            );
        }
        out.push_str("</table>");
    }

    let operations = operations(doc);
    let mut tags: Vec<(String, String)> = doc["tags"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| (text(&t["name"]), text(&t["description"])))
        .collect();
    for op in &operations {
        if !tags.iter().any(|(name, _)| *name == op.tag) {
            tags.push((op.tag.clone(), String::new()));
        }
    }

    out.push_str("<nav><h2>Endpoints</h2><ul>");
    for op in &operations {
        let _ = write!(
            out,
            "<li><a href=\"#{}\"><span class=\"method {}\">{}</span><code>{}</code></a></li>",
            op.anchor(),
            op.method,
            op.method.to_uppercase(),
            escape(&op.path)
        );
    }
    out.push_str("</ul></nav>");

    for (tag, description) in &tags {
        let _ = write!(
            out,
            "<h2 id=\"tag-{}\">{}</h2>{}",
            slug(tag),
            escape(tag),
            prose(description)
        );
        for op in operations.iter().filter(|op| op.tag == *tag) {
            operation(doc, op, &mut out);
        }
    }

    if let Some(schemas) = doc["components"]["schemas"].as_object() {
        out.push_str("<h2 id=\"schemas\">Schemas</h2>");
        for (name, schema) in schemas {
            let _ = write!(
                out,
                "<section class=\"op\" id=\"schema-{}\"><h3><code>{}</code></h3>{}",
                slug(name),
                escape(name),
                prose(&text(&schema["description"]))
            );
            let mut rows = Vec::new();
            fields(doc, schema, "", false, 0, &mut rows);
            if rows.is_empty() {
                let _ = write!(out, "<p>{}</p>", type_of(schema));
            } else {
                field_table(&rows, &mut out);
            }
            out.push_str("</section>");
        }
    }
    out.push_str("</main></body></html>\n");
    out
}

struct Operation<'a> {
    method: &'static str,
    path: String,
    tag: String,
    op: &'a Value,
}

impl Operation<'_> {
    fn anchor(&self) -> String {
        format!("op-{}-{}", self.method, slug(&self.path))
    }
}

/// Every operation, in the document's path order.
fn operations(doc: &Value) -> Vec<Operation<'_>> {
    let mut found = Vec::new();
    for (path, item) in doc["paths"].as_object().into_iter().flatten() {
        for method in METHODS {
            if let Some(op) = item.get(method).filter(|op| op.is_object()) {
                let tag = op["tags"][0].as_str().unwrap_or("other").to_owned();
                found.push(Operation {
                    method,
                    path: path.clone(),
                    tag,
                    op,
                });
            }
        }
    }
    found
}

fn operation(doc: &Value, op: &Operation, out: &mut String) {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let _ = write!(
        out,
        "<section class=\"op\" id=\"{}\"><h3><span class=\"method {}\">{}</span><code>{}</code></h3>\
         <p><strong>{}</strong></p>{}",
        op.anchor(),
        op.method,
        op.method.to_uppercase(),
        escape(&op.path),
        escape(&text(&op.op["summary"])),
        prose(&text(&op.op["description"])),
    );

    let schemes: Vec<String> = op.op["security"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_object)
        .flat_map(|requirement| requirement.keys())
        .map(|name| format!("<code>{}</code>", escape(name)))
        .collect();
    let _ = write!(
        out,
        "<p>Authentication: {}</p>",
        if schemes.is_empty() {
            "none".to_owned()
        } else {
            format!(
                "{} (<a href=\"#authentication\">API key</a>)",
                schemes.join(" or ")
            )
        }
    );

    if let Some(params) = op.op["parameters"].as_array().filter(|p| !p.is_empty()) {
        out.push_str("<h4>Parameters</h4><table><tr><th>Name</th><th>In</th><th>Type</th><th>Required</th><th>Description</th></tr>");
        for param in params {
            let _ = write!(
                out,
                "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&text(&param["name"])),
                escape(&text(&param["in"])),
                type_of(&param["schema"]),
                yes_no(param["required"].as_bool() == Some(true)),
                prose_inline(&text(&param["description"])),
            );
        }
        out.push_str("</table>");
    }

    let body = &op.op["requestBody"];
    if let Some(content) = body["content"].as_object() {
        let _ = write!(
            out,
            "<h4>Request body</h4><p>{}{}</p>",
            if body["required"].as_bool() == Some(true) {
                "Required. "
            } else {
                "Optional. "
            },
            prose_inline(&text(&body["description"]))
        );
        for (media, media_type) in content {
            let schema = &media_type["schema"];
            let _ = write!(
                out,
                "<p><code>{}</code>: {}</p>",
                escape(media),
                type_of(schema)
            );
            let mut rows = Vec::new();
            if let Some(object) = object_in(doc, schema) {
                fields(doc, object, "", true, 0, &mut rows);
            }
            field_table(&rows, out);
        }
    }

    out.push_str(
        "<h4>Responses</h4><table><tr><th>Status</th><th>Description</th><th>Body</th></tr>",
    );
    for (status, response) in op.op["responses"].as_object().into_iter().flatten() {
        let bodies: Vec<String> = response["content"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(media, m)| {
                format!(
                    "{} <span class=\"muted\">({})</span>",
                    type_of(&m["schema"]),
                    escape(media)
                )
            })
            .collect();
        let _ = write!(
            out,
            "<tr><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
            escape(status),
            prose_inline(&text(&response["description"])),
            bodies.join("<br>")
        );
    }
    out.push_str("</table></section>");
}

/// One row of a fields table: name, type, required, description.
struct Field {
    name: String,
    kind: String,
    required: bool,
    description: String,
}

fn field_table(rows: &[Field], out: &mut String) {
    if rows.is_empty() {
        return;
    }
    out.push_str(
        "<table><tr><th>Field</th><th>Type</th><th>Required</th><th>Description</th></tr>",
    );
    for row in rows {
        let _ = write!(
            out,
            "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&row.name),
            row.kind,
            yes_no(row.required),
            prose_inline(&row.description)
        );
    }
    out.push_str("</table>");
}

/// The schema a `$ref` names, or the schema itself.
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(reference) => reference
            .strip_prefix("#/components/schemas/")
            .and_then(|name| doc["components"]["schemas"].get(name))
            .unwrap_or(schema),
        None => schema,
    }
}

/// The object inside a schema that may be wrapped: `$ref`, nullable `oneOf`, an array's items.
fn object_in<'a>(doc: &'a Value, schema: &'a Value) -> Option<&'a Value> {
    let schema = resolve(doc, schema);
    if schema["properties"].is_object() || schema["allOf"].is_array() {
        return Some(schema);
    }
    if schema["items"].is_object() {
        return object_in(doc, &schema["items"]);
    }
    schema["oneOf"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|variant| object_in(doc, variant))
}

/// The fields of an object schema (and of `allOf` parts), under `prefix`. With `nested`,
/// fields of nested objects follow their parent as `parent.field` or `parent[].field`.
fn fields(
    doc: &Value,
    schema: &Value,
    prefix: &str,
    nested: bool,
    depth: usize,
    rows: &mut Vec<Field>,
) {
    let schema = resolve(doc, schema);
    for part in schema["allOf"].as_array().into_iter().flatten() {
        fields(doc, part, prefix, nested, depth, rows);
    }
    let required: Vec<&str> = schema["required"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    for (name, property) in schema["properties"].as_object().into_iter().flatten() {
        let description = property["description"]
            .as_str()
            .or_else(|| resolve(doc, property)["description"].as_str())
            .unwrap_or_default();
        rows.push(Field {
            name: format!("{prefix}{name}"),
            kind: type_of(property),
            required: required.contains(&name.as_str()),
            description: description.to_owned(),
        });
        if nested
            && depth < 3
            && let Some(inner) = object_in(doc, property)
        {
            let list = if resolve(doc, property)["items"].is_object() {
                "[]"
            } else {
                ""
            };
            fields(
                doc,
                inner,
                &format!("{prefix}{name}{list}."),
                nested,
                depth + 1,
                rows,
            );
        }
    }
}

/// A schema's type for people: `string`, `integer (int64)`, `array of SaleItem`,
/// `string | null`, an enum's values, a link to a named schema.
fn type_of(schema: &Value) -> String {
    if let Some(reference) = schema["$ref"].as_str() {
        let name = reference.rsplit('/').next().unwrap_or(reference);
        return format!(
            "<a href=\"#schema-{}\"><code>{}</code></a>",
            slug(name),
            escape(name)
        );
    }
    for key in ["oneOf", "anyOf", "allOf"] {
        if let Some(variants) = schema[key].as_array() {
            return variants.iter().map(type_of).collect::<Vec<_>>().join(" | ");
        }
    }
    if let Some(values) = schema["enum"].as_array() {
        return values
            .iter()
            .map(|v| format!("<code>{}</code>", escape(&v.to_string())))
            .collect::<Vec<_>>()
            .join(" | ");
    }
    let kinds: Vec<String> = match &schema["type"] {
        Value::String(kind) => vec![kind.clone()],
        Value::Array(kinds) => kinds
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    };
    if kinds.is_empty() {
        return "any".to_owned();
    }
    kinds
        .iter()
        .map(|kind| match kind.as_str() {
            "array" => format!("array of {}", type_of(&schema["items"])),
            other => match schema["format"].as_str() {
                Some(format) if other != "null" => format!("{other} ({})", escape(format)),
                _ => escape(other),
            },
        })
        .collect::<Vec<_>>()
        .join(" | ")
}

fn yes_no(yes: bool) -> &'static str {
    if yes { "yes" } else { "no" }
}

/// An id fragment: letters and digits, the rest as `-`.
fn slug(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Text as one line of HTML: escaped, with `backticks` as code.
fn prose_inline(text: &str) -> String {
    escape(text)
        .split('`')
        .enumerate()
        .map(|(i, part)| {
            if i % 2 == 1 {
                format!("<code>{part}</code>")
            } else {
                part.to_owned()
            }
        })
        .collect()
}

/// Text as paragraphs: a blank line parts them.
fn prose(text: &str) -> String {
    text.split("\n\n")
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| format!("<p>{}</p>", prose_inline(p)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_and_code_marked() {
        assert_eq!(
            prose_inline("a <b> & `c<d>`"),
            "a &lt;b&gt; &amp; <code>c&lt;d&gt;</code>"
        );
        assert_eq!(prose("one\n\ntwo"), "<p>one</p><p>two</p>");
    }

    #[test]
    fn types_read_as_people_say_them() {
        let doc = serde_json::json!({});
        assert_eq!(
            type_of(&serde_json::json!({"type": ["string", "null"]})),
            "string | null"
        );
        assert_eq!(
            type_of(
                &serde_json::json!({"type": "array", "items": {"$ref": "#/components/schemas/SaleItem"}})
            ),
            "array of <a href=\"#schema-SaleItem\"><code>SaleItem</code></a>"
        );
        assert_eq!(type_of(&serde_json::json!({})), "any");
        assert!(object_in(&doc, &serde_json::json!({"type": "string"})).is_none());
    }
}
