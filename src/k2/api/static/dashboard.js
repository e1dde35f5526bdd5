// K2 dashboard: plain JavaScript over the /v1 API (no build step). The chart library is TradingView
// Lightweight Charts, served from this service (vendor/, installed by `make` from npm): no CDN.
// Prices travel as exact decimal strings; they become numbers only to be drawn.
"use strict";

const state = {
  key: sessionStorage.getItem("k2.apiKey") || "",
  instrument: null, // {exchange, symbol, last_trade}
  interval: "1m",
  chart: null, candles: null, volume: null,
  bars: new Map(), // bucket seconds -> bar, what the chart holds
  spreadChart: null, bid: null, ask: null, spread: null,
  bbo: new Map(), // bucket seconds -> best bid/offer bucket, what the spread chart holds
  spreadStartS: null, // start of the spread chart's window (receive time, seconds)
  datasets: [],
  timers: [],
};
// Read by the browser test (tests/integration/api/test_dashboard.py) and handy in the console.
window.k2dash = { chartPoints: () => state.bars.size, spreadPoints: () => state.bbo.size, gapsShown: () => document.querySelectorAll("#gaps-table tbody tr[data-event]").length, loads: 0 };

const $ = (id) => document.getElementById(id);
const INTERVAL_S = { "1s": 1, "5s": 5, "15s": 15, "1m": 60, "5m": 300, "15m": 900, "1h": 3600, "1d": 86400 };

class Unauthorized extends Error {}

async function api(path, options = {}) {
  const headers = Object.assign({ Accept: "application/json" }, options.headers || {});
  if (state.key) headers.Authorization = "Bearer " + state.key;
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (response.status === 401) throw new Unauthorized("an API key is required");
  const body = await response.json();
  if (!response.ok) throw new Error(body.error ? `${body.error.code}: ${body.error.message}` : response.statusText);
  return body;
}

function setStatus(text, error = false) {
  $("status").textContent = text;
  $("status").className = "status" + (error ? " error" : "");
}

function trimDecimal(text) {
  if (text === null || text === undefined) return "";
  return text.includes(".") ? text.replace(/0+$/, "").replace(/\.$/, "") : text;
}

function time(text) { return text ? text.replace("T", " ").replace("Z", "") : ""; }

function cell(row, value, cls) {
  const td = document.createElement("td");
  td.textContent = value === null || value === undefined ? "" : String(value);
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

function fillTable(id, rows, render) {
  const body = $(id).querySelector("tbody");
  body.replaceChildren(...rows.map((r) => { const tr = document.createElement("tr"); render(tr, r); return tr; }));
}

// --- chart ----------------------------------------------------------------------------------------
function makeChart() {
  const LC = window.LightweightCharts;
  state.chart = LC.createChart($("chart"), {
    autoSize: true,
    layout: { background: { color: "#171e2e" }, textColor: "#d7dce5" },
    grid: { vertLines: { color: "#232b3e" }, horzLines: { color: "#232b3e" } },
    timeScale: { timeVisible: true, secondsVisible: true },
  });
  state.candles = state.chart.addSeries(LC.CandlestickSeries, {
    upColor: "#26a69a", downColor: "#ef5350", borderVisible: false, wickUpColor: "#26a69a", wickDownColor: "#ef5350",
  });
  state.volume = state.chart.addSeries(LC.HistogramSeries, { priceFormat: { type: "volume" }, priceScaleId: "" });
  state.volume.priceScale().applyOptions({ scaleMargins: { top: 0.8, bottom: 0 } });
}

function makeSpreadChart() {
  const LC = window.LightweightCharts;
  state.spreadChart = LC.createChart($("spread-chart"), {
    autoSize: true,
    layout: { background: { color: "#171e2e" }, textColor: "#d7dce5" },
    grid: { vertLines: { color: "#232b3e" }, horzLines: { color: "#232b3e" } },
    timeScale: { timeVisible: true, secondsVisible: true },
  });
  state.bid = state.spreadChart.addSeries(LC.LineSeries, { color: "#26a69a", lineWidth: 1, title: "bid" });
  state.ask = state.spreadChart.addSeries(LC.LineSeries, { color: "#ef5350", lineWidth: 1, title: "ask" });
  state.spread = state.spreadChart.addSeries(LC.HistogramSeries, {
    color: "#f0b42999", priceScaleId: "spread", title: "mean spread",
    priceFormat: { type: "price", precision: 6, minMove: 0.000001 },
  });
  state.spreadChart.priceScale("spread").applyOptions({ scaleMargins: { top: 0.75, bottom: 0 } });
}

function toPoint(bar) {
  const t = Date.parse(bar.bucket) / 1000;
  const candle = { time: t, open: +bar.open, high: +bar.high, low: +bar.low, close: +bar.close };
  const up = candle.close >= candle.open;
  return { candle, volume: { time: t, value: +bar.volume, color: up ? "#26a69a66" : "#ef535066" } };
}

function query(params) {
  return Object.entries(params).filter(([, v]) => v !== null && v !== undefined && v !== "")
    .map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(v)}`).join("&");
}

async function loadBars(full) {
  const inst = state.instrument;
  if (!inst) return;
  const width = INTERVAL_S[state.interval];
  const last = Date.parse(inst.last_trade) / 1000;
  const newest = state.bars.size ? Math.max(...state.bars.keys()) : null;
  const startS = full || newest === null ? Math.floor(last / width) * width - 299 * width : newest;
  const params = { symbol: inst.symbol, exchange: inst.exchange, interval: state.interval, start: new Date(startS * 1000).toISOString() };
  const body = await api("/v1/ohlcv?" + query(params));
  if (full) {
    state.bars = new Map();
    const points = body.data.map(toPoint);
    body.data.forEach((b, i) => state.bars.set(points[i].candle.time, b));
    state.candles.setData(points.map((p) => p.candle));
    state.volume.setData(points.map((p) => p.volume));
    state.chart.timeScale().fitContent();
  } else {
    for (const bar of body.data) {
      const p = toPoint(bar);
      state.bars.set(p.candle.time, bar);
      state.candles.update(p.candle);
      state.volume.update(p.volume);
    }
  }
  $("chart").dataset.points = String(state.bars.size);
  const bars = [...state.bars.values()];
  if (bars.length) $("last-price").textContent = trimDecimal(bars[bars.length - 1].close);
  const v = await api("/v1/vwap?" + query({ symbol: inst.symbol, exchange: inst.exchange, start: new Date(startS * 1000).toISOString() }));
  $("vwap").textContent = v.vwap === null ? "–" : trimDecimal(v.vwap);
  await loadSpread(full);
}

// Best bid/ask per bucket of the chart's interval, and the window's spread statistics. Quotes are timed
// by when K2 received them (Binance quotes carry no exchange time), so the window is the last 300
// buckets up to the newest quote received (a replay's quotes arrive faster than the market traded).
// Incremental like the candles: from the newest bucket on.
async function loadSpread(full) {
  const inst = state.instrument;
  const width = INTERVAL_S[state.interval];
  if (full || state.spreadStartS === null) {
    state.bbo = new Map();
    const all = await api("/v1/spread?" + query({ symbol: inst.symbol, exchange: inst.exchange }));
    const lastS = all.data.length ? Date.parse(all.data[0].last_received) / 1000 : null;
    state.spreadStartS = lastS === null ? null : Math.floor(lastS / width) * width - 299 * width;
  }
  $("spread-instrument").textContent = `${inst.symbol} · ${inst.exchange}`;
  if (state.spreadStartS === null) {
    [state.bid, state.ask, state.spread].forEach((series) => series.setData([]));
    $("spread-chart").dataset.points = "0";
    $("spread-stats").textContent = "no quotes for this instrument";
    return;
  }
  const newest = state.bbo.size ? Math.max(...state.bbo.keys()) : null;
  const startS = newest === null ? state.spreadStartS : newest;
  const params = { symbol: inst.symbol, exchange: inst.exchange, interval: state.interval, start: new Date(startS * 1000).toISOString() };
  const body = await api("/v1/bbo?" + query(params));
  for (const b of body.data) state.bbo.set(Date.parse(b.bucket) / 1000, b);
  const points = [...state.bbo.entries()].sort((x, y) => x[0] - y[0]);
  state.bid.setData(points.map(([t, b]) => ({ time: t, value: +b.bid_price })));
  state.ask.setData(points.map(([t, b]) => ({ time: t, value: +b.ask_price })));
  state.spread.setData(points.map(([t, b]) => ({ time: t, value: +b.mean_spread })));
  if (full) state.spreadChart.timeScale().fitContent();
  $("spread-chart").dataset.points = String(state.bbo.size);
  const stats = await api("/v1/spread?" + query({ symbol: inst.symbol, exchange: inst.exchange, start: new Date(state.spreadStartS * 1000).toISOString() }));
  const s = stats.data[0];
  const last = points.length ? points[points.length - 1][1] : null;
  $("spread-stats").textContent = !s || !last ? "no quotes for this instrument in the window"
    : `best bid ${trimDecimal(last.bid_price)} × ${trimDecimal(last.bid_size)} · ask ${trimDecimal(last.ask_price)} × ${trimDecimal(last.ask_size)}`
      + ` · ${s.quotes} quotes · spread mean ${trimDecimal(s.mean_spread)} (${(+s.mean_spread_bps).toFixed(3)} bps), min ${trimDecimal(s.min_spread)}, max ${trimDecimal(s.max_spread)}`;
}

async function loadTrades() {
  const inst = state.instrument;
  if (!inst) return;
  const start = new Date(Date.parse(inst.last_trade) - 30_000).toISOString();
  const body = await api("/v1/asof?" + query({ symbol: inst.symbol, exchange: inst.exchange, start, limit: 1000, tolerance: "1m" }));
  const recent = body.data.slice(-25).reverse();
  fillTable("trades-table", recent, (tr, t) => {
    cell(tr, time(t.timestamp).slice(11)); cell(tr, t.side, t.side); cell(tr, trimDecimal(t.price));
    cell(tr, trimDecimal(t.quantity)); cell(tr, trimDecimal(t.bid_price), "BUY"); cell(tr, trimDecimal(t.ask_price), "SELL");
    cell(tr, t.trade_id);
  });
}

// --- instruments, feeds, completeness --------------------------------------------------------------
async function loadInstruments() {
  const body = await api("/v1/instruments");
  const select = $("instrument");
  const current = select.value;
  const options = body.data.map((i) => `${i.exchange}:${i.symbol}`);
  if (options.join() !== [...select.options].map((o) => o.value).join()) {
    select.replaceChildren(...body.data.map((i) => new Option(`${i.symbol} · ${i.exchange}`, `${i.exchange}:${i.symbol}`)));
    if (options.includes(current)) select.value = current;
  }
  const chosen = body.data.find((i) => `${i.exchange}:${i.symbol}` === select.value) || body.data[0] || null;
  const changed = !state.instrument || !chosen || state.instrument.symbol !== chosen.symbol || state.instrument.exchange !== chosen.exchange;
  state.instrument = chosen;
  return changed;
}

async function loadFeeds() {
  const body = await api("/v1/feeds");
  $("feeds-source").textContent = body.source === "process"
    ? "live counters of the pipeline in this process, and the table"
    : "from the table (the service runs apart from the pipeline)";
  fillTable("feeds-table", body.feeds, (tr, f) => {
    tr.dataset.kind = f.kind;
    cell(tr, f.exchange); cell(tr, f.symbol); cell(tr, f.kind); cell(tr, time(f.last_event));
    const fresh = f.freshness_s;
    cell(tr, fresh === null ? "" : fresh < 120 ? `${fresh.toFixed(1)} s` : `${(fresh / 3600).toFixed(1)} h`, fresh !== null && fresh < 10 ? "ok" : "bad");
    cell(tr, f.records_per_s.toFixed(2));
  });
  const rate = (x) => (x === null ? "…" : x.toFixed(1));
  fillTable("venues-table", body.venues, (tr, v) => {
    cell(tr, v.venue); cell(tr, v.connected ? "yes" : "no", v.connected ? "ok" : "bad");
    cell(tr, rate(v.frames_per_s)); cell(tr, rate(v.records_per_s)); cell(tr, rate(v.rejected_per_s));
  });
}

async function loadCompleteness() {
  const quality = await api("/v1/quality");
  fillTable("quality-table", quality.data, (tr, q) => {
    cell(tr, q.day); cell(tr, `${q.exchange}:${q.symbol}`); cell(tr, q.expected); cell(tr, q.trades);
    cell(tr, q.missing, q.missing > 0 ? "bad" : "ok"); cell(tr, q.backfilled_trades); cell(tr, q.gaps_found);
    cell(tr, q.gaps_backfilled); cell(tr, q.gaps_unrecoverable, q.gaps_unrecoverable ? "bad" : "");
    cell(tr, q.gaps_open, q.gaps_open ? "OPEN" : ""); cell(tr, q.duplicates_dropped);
  });
  const gaps = await api("/v1/gaps");
  fillTable("gaps-table", gaps.data, (tr, g) => {
    tr.dataset.event = g.event_id; tr.dataset.firstId = g.first_id; tr.dataset.lastId = g.last_id; tr.dataset.status = g.status;
    cell(tr, g.day); cell(tr, `${g.exchange}:${g.symbol}`); cell(tr, `${g.first_id}–${g.last_id}`); cell(tr, g.count);
    cell(tr, g.status, g.status); cell(tr, g.recovered); cell(tr, time(g.detected_at)); cell(tr, g.detail);
  });
}

async function runSql(event) {
  event.preventDefault();
  $("sql-status").textContent = "running…";
  try {
    const body = await api("/v1/sql", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ query: $("sql-input").value }),
    });
    const head = document.createElement("tr");
    body.columns.forEach((c) => { const th = document.createElement("th"); th.textContent = c.name; th.title = c.type; head.appendChild(th); });
    $("sql-table").querySelector("thead").replaceChildren(head);
    fillTable("sql-table", body.rows.slice(0, 500), (tr, row) => row.forEach((v) => cell(tr, typeof v === "object" && v !== null ? JSON.stringify(v) : v)));
    $("sql-status").textContent = `${body.row_count} rows${body.truncated ? " (cut at the row cap)" : ""}${body.row_count > 500 ? ", first 500 shown" : ""}`;
  } catch (error) {
    if (error instanceof Unauthorized) return askKey();
    $("sql-status").textContent = error.message;
  }
}

// --- loop -------------------------------------------------------------------------------------------
function askKey() {
  $("key-form").hidden = false;
  setStatus("an API key is required", true);
}

async function refresh(full) {
  try {
    const changed = await loadInstruments();
    await loadBars(full || changed);
    await Promise.all([loadTrades(), loadFeeds()]);
    window.k2dash.loads += 1;
    setStatus(`updated ${new Date().toISOString().slice(11, 19)} UTC`);
  } catch (error) {
    if (error instanceof Unauthorized) return askKey();
    setStatus(error.message, true);
  }
}

async function refreshCompleteness() {
  try { await loadCompleteness(); } catch (error) {
    if (error instanceof Unauthorized) return askKey();
    setStatus(error.message, true);
  }
}

async function start() {
  state.timers.forEach(clearInterval);
  state.timers = [];
  try {
    const meta = await api("/v1/meta");
    $("mode").textContent = meta.auth === "open" ? "open (localhost)" : "API key";
    state.datasets = meta.datasets.map((d) => d.name);
  } catch (error) {
    if (error instanceof Unauthorized) return askKey();
    return setStatus(error.message, true);
  }
  $("key-form").hidden = true;
  await refresh(true);
  await refreshCompleteness();
  state.timers.push(setInterval(() => { if ($("live").checked) refresh(false); }, 2000));
  state.timers.push(setInterval(() => { if ($("live").checked) refreshCompleteness(); }, 5000));
}

document.addEventListener("DOMContentLoaded", () => {
  makeChart();
  makeSpreadChart();
  $("interval").addEventListener("change", () => { state.interval = $("interval").value; refresh(true); });
  $("instrument").addEventListener("change", () => refresh(true));
  $("sql-form").addEventListener("submit", runSql);
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.key = $("key-input").value.trim();
    sessionStorage.setItem("k2.apiKey", state.key);
    start();
  });
  start();
});
