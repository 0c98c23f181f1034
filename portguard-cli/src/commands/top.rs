//! `portguard top`: a live view for a terminal (ratatui over crossterm):
//! pass, drop and would-drop rates per service and per reason with
//! sparklines, read from the pinned counters (exact, not sampled), and the
//! top dropped/would-drop (proto, port) pairs and sources of the last minute,
//! from the daemon's events. `q` quits. Laid out for 80x24.

use std::{
    collections::{BTreeMap, VecDeque},
    io::BufRead as _,
    path::Path,
    time::{Duration, Instant},
};

use ratatui::{
    Frame,
    crossterm::event::{self, Event, KeyCode},
    layout::{Constraint, Layout},
    style::{Color, Style},
    widgets::{Block, Borders, Paragraph, Row, Sparkline, Table},
};

use crate::{
    cli::TopArgs,
    commands::events::{ClientError, parse_line, request},
};
use portguard::{
    counters,
    events::control::{Request, Top},
    exit,
    pinned::PinnedInstance,
};

/// Seconds of history in the sparklines.
const HISTORY: usize = 60;

#[derive(Default)]
struct Model {
    /// Per (service or reason, verdict): packets at the last sample.
    last: BTreeMap<(String, &'static str), u64>,
    /// Per (service or reason, verdict): packets per second now.
    rates: BTreeMap<(String, &'static str), u64>,
    /// Totals per verdict per second, newest last.
    history: BTreeMap<&'static str, VecDeque<u64>>,
    top: Option<Top>,
    error: Option<String>,
}

pub fn top(args: TopArgs) -> u8 {
    // Fail before taking over the terminal when nothing runs there.
    if let Err(e) = fetch_top(&args.run_dir, &args.iface) {
        eprintln!("portguard top --iface {}: {e}", args.iface);
        return e.exit_code();
    }
    let mut terminal = ratatui::init();
    let mut model = Model::default();
    let tick = Duration::from_millis(args.interval_ms.max(100));
    let mut next = Instant::now();
    let result = loop {
        if Instant::now() >= next {
            sample(&mut model, &args.bpffs, &args.iface, tick);
            model.top = match fetch_top(&args.run_dir, &args.iface) {
                Ok(t) => Some(t),
                Err(e) => {
                    model.error = Some(e.to_string());
                    model.top
                }
            };
            next = Instant::now() + tick;
        }
        if let Err(e) = terminal.draw(|f| draw(f, &args.iface, &model)) {
            break Err(e.to_string());
        }
        match event::poll(next.saturating_duration_since(Instant::now())) {
            Ok(true) => match event::read() {
                Ok(Event::Key(k)) if matches!(k.code, KeyCode::Char('q') | KeyCode::Esc) => {
                    break Ok(());
                }
                Ok(_) => {}
                Err(e) => break Err(e.to_string()),
            },
            Ok(false) => {}
            Err(e) => break Err(e.to_string()),
        }
    };
    ratatui::restore();
    match result {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("portguard top: {e}");
            exit::FAILURE
        }
    }
}

fn fetch_top(run_dir: &Path, iface: &str) -> Result<Top, ClientError> {
    let mut reader = request(run_dir, iface, &Request::Top)?;
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .map_err(|e| ClientError::Output(e.to_string()))?;
    parse_line(line.trim())
}

/// Reads the pinned counters and turns the difference into rates.
fn sample(model: &mut Model, bpffs: &Path, iface: &str, tick: Duration) {
    let snap = (|| {
        let instance = PinnedInstance::find(bpffs, iface)
            .ok_or_else(|| format!("nothing pinned for {iface}"))?;
        // Rates for the whole instance: every leg's counters added up.
        let mut total = counters::Snapshot::default();
        for (_, s) in instance.snapshots()? {
            total.merge(&s);
        }
        Ok::<_, String>(total)
    })();
    let snap = match snap {
        Ok(s) => s,
        Err(e) => {
            model.error = Some(format!("counters: {e}"));
            return;
        }
    };
    let mut now: BTreeMap<(String, &'static str), u64> = BTreeMap::new();
    for (k, c) in &snap.rows {
        *now.entry((k.service.clone(), k.verdict)).or_default() += c.packets;
    }
    let secs = tick.as_secs_f64().max(0.1);
    let first = model.last.is_empty();
    let mut totals: BTreeMap<&'static str, u64> = BTreeMap::new();
    model.rates.clear();
    for (k, v) in &now {
        let before = model.last.get(k).copied().unwrap_or(*v);
        let rate = ((v.saturating_sub(before)) as f64 / secs).round() as u64;
        model.rates.insert(k.clone(), rate);
        *totals.entry(k.1).or_default() += rate;
    }
    model.last = now;
    if first {
        return;
    }
    for verdict in ["pass", "drop", "would_drop"] {
        let h = model.history.entry(verdict).or_default();
        h.push_back(totals.get(verdict).copied().unwrap_or(0));
        while h.len() > HISTORY {
            h.pop_front();
        }
    }
}

fn draw(f: &mut Frame, iface: &str, m: &Model) {
    let [head, sparks, middle, bottom] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(6),
        Constraint::Min(6),
        Constraint::Length(8),
    ])
    .areas(f.area());
    let mode = m.top.as_ref().map_or("?", |t| t.mode.as_str());
    let suppressed = m.top.as_ref().map_or(0, |t| t.suppressed);
    let mut title =
        format!("portguard top  {iface}  mode {mode}  events suppressed {suppressed}  q quits");
    if let Some(e) = &m.error {
        title = format!("{title}  ! {e}");
    }
    f.render_widget(Paragraph::new(title), head);

    let cols = Layout::horizontal([Constraint::Ratio(1, 3); 3]).split(sparks);
    for (i, (verdict, color)) in [
        ("pass", Color::Green),
        ("drop", Color::Red),
        ("would_drop", Color::Yellow),
    ]
    .into_iter()
    .enumerate()
    {
        let data: Vec<u64> = m
            .history
            .get(verdict)
            .map(|h| h.iter().copied().collect())
            .unwrap_or_default();
        let now = data.last().copied().unwrap_or(0);
        f.render_widget(
            Sparkline::default()
                .block(
                    Block::default()
                        .borders(Borders::ALL)
                        .title(format!("{verdict} {now}/s")),
                )
                .data(&data)
                .style(Style::default().fg(color)),
            cols[i],
        );
    }

    let mut rows: Vec<(&(String, &'static str), &u64)> =
        m.rates.iter().filter(|(_, r)| **r > 0).collect();
    rows.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let table_rows: Vec<Row> = rows
        .iter()
        .map(|((svc, verdict), rate)| {
            Row::new(vec![
                svc.clone(),
                (*verdict).to_string(),
                format!("{rate}/s"),
            ])
        })
        .collect();
    f.render_widget(
        Table::new(
            table_rows,
            [
                Constraint::Min(40),
                Constraint::Length(10),
                Constraint::Length(10),
            ],
        )
        .header(Row::new(vec!["service / reason", "verdict", "rate"]))
        .block(Block::default().borders(Borders::ALL).title("rates")),
        middle,
    );

    let [ports, sources] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(bottom);
    let (port_rows, source_rows): (Vec<Row>, Vec<Row>) = match &m.top {
        Some(t) => (
            t.view
                .ports
                .iter()
                .map(|(proto, port, verdict, n)| {
                    Row::new(vec![
                        format!("{proto}/{port}"),
                        verdict.clone(),
                        n.to_string(),
                    ])
                })
                .collect(),
            t.view
                .sources
                .iter()
                .map(|(src, n)| Row::new(vec![src.to_string(), n.to_string()]))
                .collect(),
        ),
        None => (Vec::new(), Vec::new()),
    };
    f.render_widget(
        Table::new(
            port_rows,
            [
                Constraint::Length(11),
                Constraint::Length(10),
                Constraint::Min(6),
            ],
        )
        .block(
            Block::default()
                .borders(Borders::ALL)
                .title("dropped ports, last minute"),
        ),
        ports,
    );
    f.render_widget(
        Table::new(source_rows, [Constraint::Min(24), Constraint::Length(8)]).block(
            Block::default()
                .borders(Borders::ALL)
                .title("sources, last minute"),
        ),
        sources,
    );
}
