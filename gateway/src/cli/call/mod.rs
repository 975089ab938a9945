//! `nexus-gateway call`: a Nexus caller for people and scripts. It starts or cancels an
//! operation through the gateway, prints the result, state, token and timings, and exits with
//! a code that tells the outcomes apart. With `--async --wait` it receives the completion on a
//! listener of its own ([`listener`]).

mod listener;
mod outcome;
mod report;

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Args as ClapArgs;
use http::{HeaderMap, HeaderName, HeaderValue, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full};
use nexus_certs::Identity;

use self::listener::CallbackListener;
use self::outcome::{EXIT_TRANSPORT, Outcome};
use self::report::Report;
use super::conn::Connection;
use super::{Failure, write_stdout};
use crate::client::HttpClient;
use crate::headers;
use crate::worker::encode;

pub use self::outcome::EXIT_USAGE;

const AFTER_HELP: &str = "\
Without --cert, calls as namespace \"caller\" with the certificate of `nexus-gateway dev`.
With --json, stdout holds one JSON object whenever an answer came (exit codes 0 to 3).

Exit codes:
  0   succeeded; started (--async without --wait); cancel accepted
  1   the operation failed
  2   the operation was canceled
  3   handler error: the handler or the gateway answered an error (4xx/5xx other than a
      failed or canceled operation, or an answer Nexus does not allow)
  4   transport error: cannot connect, TLS failure, no answer or no completion in time
  64  usage error: bad flags or input, unreadable input or certificate files";

/// Added to --timeout before the call gives up on an answer: the gateway answers
/// UPSTREAM_TIMEOUT itself shortly before the deadline, and that answer should win.
const ANSWER_SLACK: Duration = Duration::from_secs(5);

#[derive(ClapArgs)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    /// Endpoint name or id.
    endpoint: String,
    /// Service name.
    service: String,
    /// Operation name.
    operation: String,
    /// Input as JSON, sent with Content-Type: application/json.
    #[arg(long, value_name = "JSON", value_parser = json_text, conflicts_with = "input_file")]
    input: Option<String>,
    /// Input read from a file ("-": stdin), sent as application/json if it is JSON, else as
    /// application/octet-stream.
    #[arg(long, value_name = "FILE")]
    input_file: Option<PathBuf>,
    /// Extra request header (repeatable); replaces the one `call` would set, e.g.
    /// Nexus-Request-Id=order-42 to retry a start.
    #[arg(long = "header", value_name = "NAME=VALUE", value_parser = header_pair)]
    headers: Vec<(HeaderName, HeaderValue)>,
    /// How long the gateway and the handler have to answer (sent as Request-Timeout).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = duration)]
    timeout: Duration,
    /// Let the handler answer asynchronously: send a callback URL for the completion.
    #[arg(long = "async")]
    asynchronous: bool,
    /// With --async: listen for the completion on a local listener and print it.
    #[arg(long, requires = "asynchronous")]
    wait: bool,
    /// How long --wait waits for the completion.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = duration, requires = "wait")]
    wait_timeout: Duration,
    /// Address the --wait listener binds.
    #[arg(
        long,
        value_name = "ADDR",
        default_value = "127.0.0.1:0",
        requires = "wait"
    )]
    callback_listen: SocketAddr,
    /// Callback URL to send instead of the listener's own, e.g. when the gateway reaches this
    /// machine under another address (with --wait, completions on any path are taken).
    /// Required with --async without --wait.
    #[arg(long, value_name = "URL", value_parser = callback_url, requires = "asynchronous")]
    callback_url: Option<String>,
    /// Cancel the operation with this token instead of starting one.
    #[arg(long, value_name = "TOKEN", conflicts_with_all = ["input", "input_file", "asynchronous"])]
    cancel: Option<String>,
    /// Print one JSON object (state, status, token, result or failure or error, timings).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    conn: Connection,
}

pub async fn run(args: Args) -> Result<(), Failure> {
    if args.asynchronous && !args.wait && args.callback_url.is_none() {
        return Err(usage(
            "--async needs somewhere to send the completion: add --wait to receive it here, \
             or --callback-url URL",
        ));
    }
    let caller = Identity::Namespace(super::dev::CALLER.into());
    let client = args.conn.client(&caller).map_err(as_usage)?;
    let base = args.conn.base_uri().map_err(as_usage)?;
    if let Some(token) = &args.cancel {
        return cancel(&args, &client, &base, token).await;
    }
    let (body, content_type) = input(&args)?;

    let mut listener = None;
    let callback = if args.wait {
        let bound = CallbackListener::bind(args.callback_listen, args.callback_url.clone())
            .await
            .map_err(usage)?;
        let url = bound.url().to_owned();
        listener = Some(bound);
        if !args.json {
            write_stdout(&format!("{:<10} {url}\n", "callback:"))?;
        }
        Some(url)
    } else {
        args.callback_url.clone()
    };

    let mut path = operation_path(&args);
    if let Some(url) = &callback {
        path = format!("{path}?callback={}", encode(url));
    }
    let mut request = Request::post(crate::worker::join(&base, &path).map_err(as_usage)?);
    if let Some(ct) = content_type {
        request = request.header(header::CONTENT_TYPE, ct);
    }
    let request = request
        .header(headers::REQUEST_ID, uuid::Uuid::new_v4().to_string())
        .body(Full::new(body))
        .map_err(as_usage)?;
    let sent = Instant::now();
    let (status, headers, body) = send(&client, &base, with_headers(request, &args), &args).await?;
    let took = sent.elapsed();
    let (answer, token) = outcome::start(status, &headers, body);
    let hint = callback_refused(&answer, callback.is_some());
    let mut report = Report {
        status,
        token,
        answer,
        took,
        callback_url: callback,
        completion: None,
        hint,
    };
    if !args.json {
        write_stdout(&report.human_answer())?;
    }
    let running = matches!(report.answer, Outcome::Running);
    if let Some(mut listener) = listener.filter(|_| running) {
        if !args.json {
            let wait = report::duration(args.wait_timeout);
            write_stdout(&format!("waiting for the completion (up to {wait})\n"))?;
        }
        let left = args.wait_timeout.saturating_sub(sent.elapsed());
        let completion = listener.next(left).await;
        listener.close().await;
        let Some(completion) = completion else {
            return Err(Failure {
                message: format!(
                    "no completion arrived within --wait-timeout {}; the operation may still \
                     be running (token {})",
                    humantime::format_duration(args.wait_timeout),
                    report.token.as_deref().unwrap_or("unknown"),
                ),
                code: EXIT_TRANSPORT,
            });
        };
        report.token = report.token.or(completion.token);
        report.completion = Some((completion.outcome, sent.elapsed()));
        if !args.json {
            write_stdout(&report.human_completion())?;
        }
    }
    finish(&report, args.json)
}

async fn cancel(args: &Args, client: &HttpClient, base: &Uri, token: &str) -> Result<(), Failure> {
    let token_value = HeaderValue::from_str(token)
        .map_err(|_| usage(format!("--cancel {token:?} cannot be sent in a header")))?;
    let path = format!("{}/cancel", operation_path(args));
    let request = Request::post(crate::worker::join(base, &path).map_err(as_usage)?)
        .header(headers::OPERATION_TOKEN, token_value)
        .body(Full::new(Bytes::new()))
        .map_err(as_usage)?;
    let sent = Instant::now();
    let (status, headers, body) = send(client, base, with_headers(request, args), args).await?;
    let report = Report {
        status,
        token: Some(token.to_owned()),
        answer: outcome::cancel(status, &headers, body),
        took: sent.elapsed(),
        callback_url: None,
        completion: None,
        hint: None,
    };
    if !args.json {
        write_stdout(&report.human_answer())?;
    }
    finish(&report, args.json)
}

/// Prints the JSON report if asked, and exits with the last outcome's code. The text report
/// is already out, so a failure carries no message of its own.
fn finish(report: &Report, json: bool) -> Result<(), Failure> {
    if json {
        write_stdout(&format!("{}\n", report.json()))?;
    }
    match report.last().exit_code() {
        0 => Ok(()),
        code => Err(Failure {
            message: String::new(),
            code,
        }),
    }
}

fn operation_path(args: &Args) -> String {
    format!(
        "{}{}/services/{}/{}",
        crate::nexus::ENDPOINTS_PREFIX,
        encode(&args.endpoint),
        encode(&args.service),
        encode(&args.operation)
    )
}

/// Adds `Request-Timeout` and the `--header`s; a `--header` replaces what `call` set.
fn with_headers(mut request: Request<Full<Bytes>>, args: &Args) -> Request<Full<Bytes>> {
    let map: &mut HeaderMap = request.headers_mut();
    map.insert(
        headers::REQUEST_TIMEOUT,
        HeaderValue::from_str(&crate::nexus::format_timeout(args.timeout))
            .expect("a duration is a header value"),
    );
    for (name, _) in &args.headers {
        map.remove(name);
    }
    for (name, value) in &args.headers {
        map.append(name.clone(), value.clone());
    }
    request
}

/// Sends a request and reads the whole answer within --timeout and some slack; what goes
/// wrong on the way is a transport error.
async fn send(
    client: &HttpClient,
    base: &Uri,
    request: Request<Full<Bytes>>,
    args: &Args,
) -> Result<(StatusCode, HeaderMap, Bytes), Failure> {
    let transport = |message: String| Failure {
        message,
        code: EXIT_TRANSPORT,
    };
    let bound = args.timeout + ANSWER_SLACK;
    let exchange = async {
        let response = client.request(request).await.map_err(|e| {
            transport(format!(
                "cannot reach the gateway at {base}: {}",
                crate::upstream::root_cause(&e)
            ))
        })?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.map_err(|e| {
            transport(format!(
                "the answer from {base} was cut off: {}",
                crate::upstream::root_cause(&e)
            ))
        })?;
        Ok((parts.status, parts.headers, body.to_bytes()))
    };
    tokio::time::timeout(bound, exchange).await.map_err(|_| {
        transport(format!(
            "no answer from {base} within {} (--timeout {} and {} of slack)",
            humantime::format_duration(bound),
            humantime::format_duration(args.timeout),
            humantime::format_duration(ANSWER_SLACK),
        ))
    })?
}

/// The body and its content type: --input is JSON; a file is JSON if it parses as JSON.
fn input(args: &Args) -> Result<(Bytes, Option<&'static str>), Failure> {
    const JSON: &str = "application/json";
    if let Some(text) = &args.input {
        return Ok((Bytes::from(text.clone()), Some(JSON)));
    }
    let Some(file) = &args.input_file else {
        return Ok((Bytes::new(), None));
    };
    let bytes = if file.as_os_str() == "-" {
        let mut buffer = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buffer)
            .map_err(|e| usage(format!("cannot read --input-file - (stdin): {e}")))?;
        buffer
    } else {
        std::fs::read(file)
            .map_err(|e| usage(format!("cannot read --input-file {}: {e}", file.display())))?
    };
    let kind = if serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_ok() {
        JSON
    } else {
        "application/octet-stream"
    };
    Ok((Bytes::from(bytes), Some(kind)))
}

/// When the gateway refused the callback URL, what the caller can do about it.
fn callback_refused(answer: &Outcome, sent_callback: bool) -> Option<String> {
    match answer {
        Outcome::HandlerError(e)
            if sent_callback
                && e.status == StatusCode::BAD_REQUEST
                && e.message.contains("callback URL") =>
        {
            Some(
                "the gateway refused the callback URL: allow its host in the gateway's \
                 [callbacks] allowed (`nexus-gateway dev` allows loopback), or pass \
                 --callback-url with an address the gateway may call"
                    .into(),
            )
        }
        _ => None,
    }
}

fn usage(message: impl Into<String>) -> Failure {
    Failure {
        message: message.into(),
        code: EXIT_USAGE,
    }
}

/// A local problem before anything was sent (certificates, URL): a usage error, so that it
/// does not read as "the operation failed" (1).
fn as_usage(error: impl Into<Failure>) -> Failure {
    Failure {
        code: EXIT_USAGE,
        ..error.into()
    }
}

fn json_text(text: &str) -> Result<String, String> {
    serde_json::from_str::<serde::de::IgnoredAny>(text)
        .map(|_| text.to_owned())
        .map_err(|e| format!("not JSON ({e}); use --input-file for other input"))
}

fn header_pair(text: &str) -> Result<(HeaderName, HeaderValue), String> {
    let (name, value) = text
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=VALUE, got {text:?}"))?;
    let name = HeaderName::try_from(name.trim())
        .map_err(|_| format!("{:?} is not a valid header name", name.trim()))?;
    let value = HeaderValue::from_str(value)
        .map_err(|_| format!("the value of header {name} is not a valid header value"))?;
    Ok((name, value))
}

/// `10s`, `500ms`, `1m`, `2.5s` (Nexus) or `1h 30m` (humantime); not zero.
fn duration(text: &str) -> Result<Duration, String> {
    let parsed = crate::nexus::parse_duration(text)
        .map(Ok)
        .unwrap_or_else(|| humantime::parse_duration(text).map_err(|e| e.to_string()))?;
    if parsed.is_zero() {
        return Err("must be more than zero".into());
    }
    Ok(parsed)
}

fn callback_url(text: &str) -> Result<String, String> {
    let uri: Uri = text.parse().map_err(|e| format!("not a URL: {e}"))?;
    match (uri.scheme_str(), uri.authority()) {
        (Some("http" | "https"), Some(_)) => Ok(text.to_owned()),
        _ => Err("expected an absolute http:// or https:// URL".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_checked_when_parsed() {
        assert!(header_pair("Nexus-Request-Id=r-1").is_ok());
        assert!(header_pair("x-empty=").is_ok());
        assert!(header_pair("no-equals").unwrap_err().contains("NAME=VALUE"));
        assert!(
            header_pair("bad name=v")
                .unwrap_err()
                .contains("header name")
        );
        assert!(header_pair("x=a\nb").unwrap_err().contains("header value"));

        assert_eq!(duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(duration("2.5s"), Ok(Duration::from_millis(2500)));
        assert_eq!(duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert!(duration("0s").is_err() && duration("soon").is_err());

        assert!(json_text(r#"{"a":1}"#).is_ok());
        assert!(json_text("{a:1}").unwrap_err().contains("not JSON"));
        assert!(callback_url("http://127.0.0.1:9/c").is_ok());
        assert!(callback_url("/relative").is_err());
    }
}
