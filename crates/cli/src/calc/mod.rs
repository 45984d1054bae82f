//! `ushuru calc`: prices invoices read as JSON or JSON Lines, one output line per invoice.

mod invoice;

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;

use serde::de::IgnoredAny;
use serde_json::value::RawValue;
use ushuru_tax::TaxRates;

pub use invoice::{InvoiceError, price_invoice};

/// Input is read and priced in chunks of about this size, split between the workers.
const CHUNK_BYTES: usize = 1 << 20;

/// What a run did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub invoices: u64,
    pub invalid: u64,
}

/// Prices every invoice of `input` and writes one line per invoice to `output`, in input
/// order: the priced invoice, or `{"error":{…}}`. Invoices are numbered from 1.
///
/// The first line decides the format: when it holds a complete JSON value the input is JSON
/// Lines (each non-blank line one invoice, so a broken line never stops the rest);
/// otherwise the input is one JSON document, possibly pretty-printed (several documents
/// one after another are accepted too, but a syntax error ends such a stream).
pub fn calculate_stream<R: Read + Send>(
    mut input: R,
    output: &mut impl Write,
    rates: &TaxRates,
    workers: usize,
) -> io::Result<Summary> {
    let mut buffer = Vec::with_capacity(CHUNK_BYTES + (64 << 10));
    let mut at_end = fill(&mut input, &mut buffer, CHUNK_BYTES)?;
    // The format is decided on the first non-blank line: read until it is whole.
    while !at_end && !first_line_is_whole(&buffer) {
        let target = buffer.len() + CHUNK_BYTES;
        at_end = fill(&mut input, &mut buffer, target)?;
    }
    // A byte-order mark is not JSON; editors on Windows write one.
    if buffer.starts_with(b"\xEF\xBB\xBF") {
        buffer.drain(..3);
    }
    if is_json_lines(&buffer) {
        calculate_lines(input, buffer, at_end, output, rates, workers.max(1))
    } else {
        input.read_to_end(&mut buffer)?;
        calculate_document(&buffer, output, rates)
    }
}

fn first_line_is_whole(buffer: &[u8]) -> bool {
    buffer
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .is_some_and(|start| memchr::memchr(b'\n', &buffer[start..]).is_some())
}

fn is_json_lines(start: &[u8]) -> bool {
    let Some(first) = start
        .split(|&b| b == b'\n')
        .map(|l| l.trim_ascii())
        .find(|l| !l.is_empty())
    else {
        return true; // empty input: no invoices either way
    };
    match serde_json::from_slice::<IgnoredAny>(first) {
        Ok(_) => true,
        // An incomplete first line is the start of a multi-line document.
        Err(e) => !e.is_eof(),
    }
}

fn calculate_document(
    document: &[u8],
    output: &mut impl Write,
    rates: &TaxRates,
) -> io::Result<Summary> {
    let mut summary = Summary::default();
    let mut out = Vec::new();
    for value in serde_json::Deserializer::from_slice(document).into_iter::<&RawValue>() {
        summary.invoices += 1;
        match value {
            Ok(raw) => {
                if let Err(error) = price_invoice(raw.get().as_bytes(), rates, &mut out) {
                    summary.invalid += 1;
                    error.write_json(summary.invoices, &mut out);
                }
            }
            Err(e) => {
                summary.invalid += 1;
                let error = InvoiceError {
                    line: None,
                    field: None,
                    code: "INVALID_JSON",
                    message: format!("not valid JSON: {e}"),
                };
                error.write_json(summary.invoices, &mut out);
                out.push(b'\n');
                break; // no way to find where the next document starts
            }
        }
        out.push(b'\n');
    }
    output.write_all(&out)?;
    output.flush()?;
    Ok(summary)
}

/// JSON Lines, as a pipeline: a reader thread cuts the input into chunks that end at a
/// newline and numbers their invoices; `workers` threads price whole chunks, each on its
/// own; this thread writes the results back in input order.
fn calculate_lines<R: Read + Send>(
    mut input: R,
    first: Vec<u8>,
    first_is_last: bool,
    output: &mut impl Write,
    rates: &TaxRates,
    workers: usize,
) -> io::Result<Summary> {
    struct Job {
        sequence: u64,
        first_number: u64,
        chunk: Vec<u8>,
    }
    struct Done {
        sequence: u64,
        out: Vec<u8>,
        invoices: u64,
        invalid: u64,
    }

    // Bounded, so that a slow reader of our output holds back the reading too. The job
    // queue is owned by the workers alone: when the last one stops (the writer failed), the
    // queue closes and the reader, blocked on sending, stops too.
    let (jobs, job_queue) = mpsc::sync_channel::<Job>(workers);
    let job_queue = Arc::new(Mutex::new(job_queue));
    let (done, finished) = mpsc::sync_channel::<Done>(workers * 2);

    thread::scope(|scope| {
        let reader = scope.spawn(move || -> io::Result<()> {
            let (mut pending, mut at_end) = (first, first_is_last);
            let (mut sequence, mut next_number) = (0, 1);
            // How much of `pending` is known to hold no newline: a line longer than a chunk
            // is read on until it ends, without scanning its start again.
            let mut searched = 0;
            loop {
                if !at_end {
                    let target = if searched == 0 {
                        CHUNK_BYTES
                    } else {
                        pending.len() + CHUNK_BYTES
                    };
                    at_end = fill(&mut input, &mut pending, target)?;
                }
                // Cut after the last newline; the partial line waits for the next chunk.
                let cut = if at_end {
                    pending.len()
                } else {
                    match memchr::memrchr(b'\n', &pending[searched..]) {
                        Some(at) => searched + at + 1,
                        None => {
                            searched = pending.len();
                            continue;
                        }
                    }
                };
                searched = 0;
                let rest = pending.split_off(cut);
                let chunk = std::mem::replace(&mut pending, rest);
                if !chunk.is_empty() {
                    let first_number = next_number;
                    next_number += invoice_lines(&chunk).count() as u64;
                    if jobs
                        .send(Job {
                            sequence,
                            first_number,
                            chunk,
                        })
                        .is_err()
                    {
                        return Ok(()); // the writer stopped: its error is reported
                    }
                    sequence += 1;
                }
                if at_end {
                    return Ok(());
                }
            }
        });

        for _ in 0..workers {
            let (job_queue, done) = (Arc::clone(&job_queue), done.clone());
            scope.spawn(move || {
                loop {
                    // The lock is held only to take a job, never while pricing.
                    let job = match job_queue.lock() {
                        Ok(queue) => queue.recv(),
                        Err(_) => return,
                    };
                    let Ok(job) = job else { return };
                    let lines: Vec<&[u8]> = invoice_lines(&job.chunk).collect();
                    let (out, invalid) = price_lines(&lines, job.first_number, rates);
                    let result = Done {
                        sequence: job.sequence,
                        out,
                        invoices: lines.len() as u64,
                        invalid,
                    };
                    if done.send(result).is_err() {
                        return;
                    }
                }
            });
        }
        drop((done, job_queue));

        let mut summary = Summary::default();
        let mut waiting = BTreeMap::new();
        let mut next_sequence = 0;
        let written = (|| -> io::Result<()> {
            for result in &finished {
                waiting.insert(result.sequence, result);
                while let Some(result) = waiting.remove(&next_sequence) {
                    output.write_all(&result.out)?;
                    summary.invoices += result.invoices;
                    summary.invalid += result.invalid;
                    next_sequence += 1;
                }
            }
            output.flush()
        })();
        // On a write error, stop the pipeline: dropping the receiver ends the workers, whose
        // exit closes the job queue, which ends the reader.
        drop(finished);
        let read = reader
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        written.and(read).map(|()| summary)
    })
}

/// The non-blank lines of a chunk (each one invoice), without their line ends.
fn invoice_lines(chunk: &[u8]) -> impl Iterator<Item = &[u8]> {
    let ends = memchr::memchr_iter(b'\n', chunk).chain(std::iter::once(chunk.len()));
    let mut start = 0;
    ends.filter_map(move |end| {
        let line = chunk[start..end].trim_ascii();
        start = end + 1;
        (!line.is_empty()).then_some(line)
    })
}

/// Prices consecutive invoice lines numbered from `first_number`; returns the output and
/// how many were invalid.
fn price_lines(lines: &[&[u8]], first_number: u64, rates: &TaxRates) -> (Vec<u8>, u64) {
    // Priced output is about twice the size of its input; three times avoids regrowing.
    let mut out = Vec::with_capacity(lines.iter().map(|l| l.len() * 3).sum());
    let mut invalid = 0;
    for (number, line) in (first_number..).zip(lines) {
        if let Err(error) = price_invoice(line, rates, &mut out) {
            invalid += 1;
            error.write_json(number, &mut out);
        }
        out.push(b'\n');
    }
    (out, invalid)
}

/// Reads until `buffer` holds at least `target` bytes or the input ends; true at the end.
fn fill(input: &mut impl Read, buffer: &mut Vec<u8>, target: usize) -> io::Result<bool> {
    while buffer.len() < target {
        let wanted = (target - buffer.len()) as u64;
        // `read_to_end` reads into spare capacity without zeroing it first.
        if input.by_ref().take(wanted).read_to_end(buffer)? == 0 {
            return Ok(true);
        }
    }
    Ok(false)
}
