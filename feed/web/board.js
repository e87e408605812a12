// The board: one table row per watched symbol. Rows are written only from the page's
// animation frame (see app.js), only while on screen, and a cell only when its text or class
// changes (each figure is one Text node whose data is replaced: no node is created).

const DASH = "–";
const MINUS = "−"; // U+2212: as wide as "+" in tabular figures
const FLASH_MS = 300; // a moved price stays lit this long
const SPARK_POINTS = 60;
const SPARK_STEP_MS = 500; // one point per half second: the last 30 s
const SPARK_REDRAW_MS = 500;
const SPARK_W = 80;
const SPARK_H = 20;
const SVG = "http://www.w3.org/2000/svg";
const ROW_H = 31; // px, border included: as in style.css
const OVERSCAN = 2; // rows kept in the document above and below the view

// Cell positions in a row (and the column classes, shared with the header in index.html).
const COLUMNS = [
  "c-sym", "c-spark", "c-last", "c-chg", "c-pct", "c-bid", "c-ask", "c-spread",
  "c-size", "c-vol", "c-vwap", "c-high", "c-low", "c-age", "c-act",
];
const SYM = 0, SPARK = 1, LAST = 2, CHG = 3, PCT = 4, BID = 5, ASK = 6, SPREAD = 7;
const SIZE = 8, VOL = 9, VWAP = 10, HIGH = 11, LOW = 12, AGE = 13, ACT = 14;
const NUMERIC = [LAST, CHG, PCT, BID, ASK, SPREAD, SIZE, VOL, VWAP, HIGH, LOW, AGE];
const FLASHING = [LAST, BID, ASK];
const BASE = COLUMNS.map((name, i) => (NUMERIC.includes(i) ? name + " num" : name));

/** "1234567.5" → "1,234,567.5" (the integer part grouped by thousands). */
export function group(text) {
  const start = text.charCodeAt(0) === 45 ? 1 : 0; // "-"
  let end = text.indexOf(".");
  if (end < 0) end = text.length;
  if (end - start <= 3) return text;
  let out = text.slice(end);
  let j = end;
  while (j - start > 3) {
    out = "," + text.slice(j - 3, j) + out;
    j -= 3;
  }
  return text.slice(0, j) + out;
}

/** A price at `decimals` places, grouped; a dash while unknown. */
function price(value, decimals) {
  return value == null ? DASH : group(value.toFixed(decimals));
}

/** A signed figure: "+0.12", "−0.12", "0.00". */
function signed(value, decimals, suffix = "") {
  const text = Math.abs(value).toFixed(decimals);
  if (Number(text) === 0) return text + suffix;
  return (value > 0 ? "+" : MINUS) + group(text) + suffix;
}

/** A count: grouped below a billion, then compact ("1.23B"). */
function count(value) {
  if (value == null) return DASH;
  if (value < 1e9) return group(String(Math.round(value)));
  return (value / 1e9).toFixed(2) + "B";
}

/** Time since the newest tick, for a glance: "<1s", "12s", "4m", "3h". */
function age(ms) {
  if (!(ms >= 1000)) return "<1s";
  if (ms < 60_000) return Math.floor(ms / 1000) + "s";
  if (ms < 3_600_000) return Math.floor(ms / 60_000) + "m";
  return Math.floor(ms / 3_600_000) + "h";
}

/** Decimal places a price was written with (JSON numbers come in shortest round-trip form). */
export function decimalsOf(value) {
  if (value == null || !Number.isFinite(value)) return 0;
  const text = String(value);
  const e = text.indexOf("e-");
  if (e >= 0) {
    const mantissa = text.slice(0, e);
    const dot = mantissa.indexOf(".");
    return Number(text.slice(e + 2)) + (dot < 0 ? 0 : mantissa.length - dot - 1);
  }
  const dot = text.indexOf(".");
  return dot < 0 ? 0 : text.length - dot - 1;
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function button(className, text, label) {
  const node = element("button", className, text);
  node.type = "button";
  node.title = label;
  node.setAttribute("aria-label", label);
  return node;
}

/** One symbol's row: its cells, what they show, its sparkline. */
class Row {
  /** @param {string} symbol */
  constructor(symbol) {
    this.symbol = symbol;
    this.el = element("div", "row waiting");
    this.el.setAttribute("role", "row");
    this.state = "waiting"; // the row's class: waiting, stale, unknown, or "" (live)
    this.el.dataset.symbol = symbol;
    this.el.tabIndex = 0;
    this.el.draggable = true;
    this.cells = BASE.map((name) => {
      const td = element("div", name);
      td.setAttribute("role", "cell");
      this.el.append(td);
      return td;
    });
    this.classes = [...BASE];
    this.texts = COLUMNS.map(() => "");
    /** @type {(Text|null)[]} the figure of each numeric cell */
    this.nodes = COLUMNS.map((_, i) => {
      if (!NUMERIC.includes(i)) return null;
      const node = document.createTextNode(DASH);
      this.cells[i].append(node);
      this.texts[i] = DASH;
      return node;
    });
    this.flashUntil = new Float64Array(COLUMNS.length);

    const sym = this.cells[SYM];
    const grip = element("span", "grip", "⠿");
    grip.setAttribute("aria-hidden", "true");
    sym.append(grip, element("span", "name", symbol));
    this.svg = document.createElementNS(SVG, "svg");
    this.svg.setAttribute("viewBox", `0 0 ${SPARK_W} ${SPARK_H}`);
    this.svg.setAttribute("aria-hidden", "true");
    this.line = document.createElementNS(SVG, "polyline");
    this.svg.append(this.line);
    this.cells[SPARK].append(this.svg);
    this.cells[ACT].append(
      button("up", "▲", `Move ${symbol} up`),
      button("down", "▼", `Move ${symbol} down`),
      button("remove", "✕", `Remove ${symbol}`),
    );

    /** @type {object|null} the snapshot on screen */
    this.snap = null;
    /** In the document (on screen, or nearly): only such rows are written. */
    this.visible = false;
    this.index = -1;
    this.decimals = 2;
    this.stale = null; // the reason, while stale
    this.unknown = false;
    this.points = [];
    this.pointStart = -Infinity;
    this.sparkDirty = false;
    this.sparkDrawn = -Infinity;
    this.trend = "";
  }

  #text(i, text) {
    if (this.texts[i] !== text) {
      this.texts[i] = text;
      this.nodes[i].data = text;
    }
  }

  #class(i, name) {
    if (this.classes[i] !== name) {
      this.classes[i] = name;
      this.cells[i].className = name;
    }
  }

  #sign(i, value) {
    this.#class(i, value > 0 ? BASE[i] + " up" : value < 0 ? BASE[i] + " down" : BASE[i]);
  }

  /** Light a cell for a price that moved; returns whether it is now lit. */
  #flash(i, before, after, now) {
    if (before == null || after == null || before === after) return false;
    this.#class(i, BASE[i] + (after > before ? " flash-up" : " flash-down"));
    this.flashUntil[i] = now + FLASH_MS;
    return true;
  }

  /** Put out the flashes whose time is up; returns whether any is still lit. */
  sweep(now) {
    let lit = false;
    for (const i of FLASHING) {
      if (this.flashUntil[i] === 0) continue;
      if (this.flashUntil[i] <= now) {
        this.flashUntil[i] = 0;
        this.#class(i, BASE[i]);
      } else {
        lit = true;
      }
    }
    return lit;
  }

  /**
   * Show a snapshot. Returns whether a cell was lit (the board then sweeps this row).
   * @param {object} s the snapshot
   * @param {number} now performance.now()
   */
  apply(s, now) {
    const before = this.snap;
    this.snap = s;
    const d = Math.min(
      8,
      Math.max(this.decimals, decimalsOf(s.last), decimalsOf(s.bid), decimalsOf(s.ask)),
    );
    this.decimals = d;
    this.#text(LAST, price(s.last, d));
    this.#text(BID, price(s.bid, d));
    this.#text(ASK, price(s.ask, d));
    this.#text(SPREAD, s.bid == null || s.ask == null ? DASH : (s.ask - s.bid).toFixed(d));
    this.#text(
      SIZE,
      s.bid_size == null || s.ask_size == null ? DASH : `${count(s.bid_size)} × ${count(s.ask_size)}`,
    );
    this.#text(VOL, count(s.volume));
    this.#text(VWAP, price(s.vwap, d));
    this.#text(HIGH, price(s.high, d));
    this.#text(LOW, price(s.low, d));
    if (s.last == null || s.open == null) {
      this.#text(CHG, DASH);
      this.#text(PCT, DASH);
    } else {
      const change = s.last - s.open;
      this.#text(CHG, signed(change, d));
      this.#text(PCT, s.open ? signed((change / s.open) * 100, 2, "%") : DASH);
      const rounded = Number(change.toFixed(d));
      this.#sign(CHG, rounded);
      this.#sign(PCT, rounded);
    }
    let lit = false;
    if (before) {
      lit = this.#flash(LAST, before.last, s.last, now) || lit;
      lit = this.#flash(BID, before.bid, s.bid, now) || lit;
      lit = this.#flash(ASK, before.ask, s.ask, now) || lit;
    }
    this.#rowClass();
    return lit;
  }

  /** Put the row at position `index` of the board. */
  place(index) {
    if (this.index !== index) {
      this.index = index;
      this.el.style.top = `${index * ROW_H}px`;
    }
  }

  /** Keep a point of the sparkline (for every snapshot received, on screen or not). */
  record(last, now) {
    if (last == null) return;
    if (now - this.pointStart >= SPARK_STEP_MS) {
      this.points.push(last);
      if (this.points.length > SPARK_POINTS) this.points.shift();
      this.pointStart = now;
      this.sparkDirty = true;
    } else if (this.points[this.points.length - 1] !== last) {
      this.points[this.points.length - 1] = last;
      this.sparkDirty = true;
    }
  }

  /** Time since the newest tick, from the server's clock (`serverNowMs`). */
  age(serverNowMs) {
    if (this.snap && this.snap.ts != null) this.#text(AGE, age(serverNowMs - this.snap.ts / 1e6));
  }

  setStale(reason) {
    this.stale = reason;
    this.#rowClass();
  }

  setUnknown(unknown) {
    this.unknown = unknown;
    this.#rowClass();
  }

  #rowClass() {
    const name = this.unknown
      ? "unknown"
      : this.stale !== null
        ? "stale"
        : this.snap === null
          ? "waiting"
          : "";
    if (this.state !== name) {
      // classList, not className: a drag in progress keeps its own classes.
      if (this.state) this.el.classList.remove(this.state);
      if (name) this.el.classList.add(name);
      this.state = name;
    }
    const title = this.unknown
      ? `${this.symbol}: the feed does not carry this symbol`
      : this.stale !== null
        ? this.stale
        : "";
    if (this.el.title !== title) this.el.title = title;
  }

  /** Redraw the sparkline if it changed and was not drawn lately (`force`: now). */
  drawSpark(now, force = false) {
    if (!force && (!this.sparkDirty || now - this.sparkDrawn < SPARK_REDRAW_MS)) return;
    this.sparkDirty = false;
    this.sparkDrawn = now;
    const points = this.points;
    if (points.length < 2) return;
    let lo = Infinity;
    let hi = -Infinity;
    for (const p of points) {
      if (p < lo) lo = p;
      if (p > hi) hi = p;
    }
    const span = hi - lo;
    const dx = (SPARK_W - 2) / (SPARK_POINTS - 1);
    const x0 = SPARK_W - 1 - (points.length - 1) * dx;
    let text = "";
    for (let i = 0; i < points.length; i++) {
      const y = span ? 1.5 + (1 - (points[i] - lo) / span) * (SPARK_H - 3) : SPARK_H / 2;
      text += `${(x0 + i * dx).toFixed(1)},${y.toFixed(1)} `;
    }
    this.line.setAttribute("points", text);
    const first = points[0];
    const last = points[points.length - 1];
    const trend = last > first ? "up" : last < first ? "down" : "";
    if (trend !== this.trend) {
      this.trend = trend;
      this.svg.setAttribute("class", trend);
    }
  }
}

/**
 * The board's rows, in the watchlist's order. Only the rows in (or near) the scrolled view are
 * in the document: the others are kept, detached, and put back, with their newest figures,
 * when scrolled to. Every row is ROW_H high, so where each goes is a multiplication.
 */
export class Board {
  /**
   * @param {HTMLElement} body the rows' parent
   * @param {HTMLElement} viewport the scrolling box around it
   * @param {{remove(symbol: string): void, move(symbol: string, delta: number): void,
   *          moveTo(symbol: string, index: number): void, shown(): void}} actions what the
   *   row controls do, and what to do when rows come on screen (they may have figures to show)
   */
  constructor(body, viewport, actions) {
    this.body = body;
    this.viewport = viewport;
    this.actions = actions;
    /** @type {Map<string, Row>} */
    this.rows = new Map();
    /** @type {string[]} the symbols, in order */
    this.order = [];
    /** Rows with a lit cell: swept every frame until they are out. */
    this.lit = new Set();
    /** @type {Set<Row>} the rows in the document */
    this.shown = new Set();
    this.placeDue = true;
    const moved = () => {
      this.placeDue = true;
      this.actions.shown();
    };
    viewport.addEventListener("scroll", moved, { passive: true });
    new ResizeObserver(moved).observe(viewport);
    this.#listen();
  }

  /** Show exactly these symbols, in this order: rows kept, added, removed, moved. */
  setSymbols(symbols) {
    const wanted = new Set(symbols);
    for (const [symbol, row] of this.rows) {
      if (!wanted.has(symbol)) {
        row.el.remove();
        this.rows.delete(symbol);
        this.lit.delete(row);
        this.shown.delete(row);
      }
    }
    for (const symbol of symbols) {
      if (!this.rows.has(symbol)) this.rows.set(symbol, new Row(symbol));
    }
    this.order = [...symbols];
    this.body.style.height = `${symbols.length * ROW_H}px`;
    this.place();
  }

  /** Put in the document the rows the view shows (and a few around), in order; take out the
   * others. Called when the list, the scroll position or the size changed. */
  place() {
    this.placeDue = false;
    const top = this.viewport.scrollTop - this.body.offsetTop;
    const first = Math.max(0, Math.floor(top / ROW_H) - OVERSCAN);
    const last = Math.min(
      this.order.length - 1,
      Math.ceil((top + this.viewport.clientHeight) / ROW_H) + OVERSCAN,
    );
    const wanted = new Set();
    for (let i = first; i <= last; i++) wanted.add(this.rows.get(this.order[i]));
    for (const row of this.shown) {
      if (!wanted.has(row)) {
        row.el.remove();
        row.visible = false;
        this.shown.delete(row);
      }
    }
    let cursor = this.body.firstChild;
    for (let i = first; i <= last; i++) {
      const row = this.rows.get(this.order[i]);
      row.place(i);
      if (!row.visible) {
        row.visible = true;
        row.sparkDirty = true;
        this.shown.add(row);
      }
      if (row.el === cursor) {
        cursor = cursor.nextSibling;
      } else {
        // Moving the focused row would blur it: put the focus back.
        const focused = row.el.contains(document.activeElement) ? document.activeElement : null;
        this.body.insertBefore(row.el, cursor);
        if (focused) focused.focus();
      }
    }
  }

  /** The row of `symbol`, if on the board. */
  row(symbol) {
    return this.rows.get(symbol);
  }

  /** Scroll `symbol`'s row into view (placing it) and focus it. */
  focus(symbol) {
    const index = this.order.indexOf(symbol);
    if (index < 0) return;
    const top = index * ROW_H + this.body.offsetTop;
    const view = this.viewport;
    const head = this.body.offsetTop;
    if (top - head < view.scrollTop) view.scrollTop = top - head;
    else if (top + ROW_H > view.scrollTop + view.clientHeight) {
      view.scrollTop = top + ROW_H - view.clientHeight;
    }
    this.place();
    this.rows.get(symbol).el.focus();
  }

  /** Write a snapshot to its row (from the frame loop); the row must be on screen. */
  apply(row, snap, now) {
    if (row.apply(snap, now)) this.lit.add(row);
  }

  /** Per frame: put out the flashes that are done. Returns whether some are still lit. */
  sweep(now) {
    for (const row of this.lit) if (!row.sweep(now)) this.lit.delete(row);
    return this.lit.size > 0;
  }

  /** A few times a second: the age of each row on screen (against the server's clock,
   * `serverNowMs`) and the sparklines that are due. */
  slow(now, serverNowMs) {
    for (const row of this.shown) {
      row.age(serverNowMs);
      row.drawSpark(now);
    }
  }

  /** Mark symbols stale (with the reason, shown on hover) or live again (reason null). */
  setStale(symbols, reason) {
    for (const symbol of symbols) this.rows.get(symbol)?.setStale(reason);
  }

  /** Forget every stale mark (the connection is gone; the server tells again on resubscribe). */
  clearStale() {
    for (const row of this.rows.values()) row.setStale(null);
  }


  #listen() {
    const body = this.body;
    const symbolOf = (node) => node?.closest?.(".row")?.dataset.symbol;
    body.addEventListener("click", (event) => {
      const target = event.target.closest("button");
      const symbol = symbolOf(target);
      if (!target || !symbol) return;
      if (target.classList.contains("remove")) this.actions.remove(symbol);
      else if (target.classList.contains("up")) this.actions.move(symbol, -1);
      else if (target.classList.contains("down")) this.actions.move(symbol, 1);
    });
    body.addEventListener("keydown", (event) => {
      const symbol = symbolOf(event.target);
      if (!symbol || !event.target.classList.contains("row")) return;
      if (event.altKey && (event.key === "ArrowUp" || event.key === "ArrowDown")) {
        event.preventDefault();
        this.actions.move(symbol, event.key === "ArrowUp" ? -1 : 1);
      } else if (event.key === "ArrowUp" || event.key === "ArrowDown") {
        event.preventDefault();
        const index = this.order.indexOf(symbol) + (event.key === "ArrowUp" ? -1 : 1);
        if (index >= 0 && index < this.order.length) this.focus(this.order[index]);
      } else if (event.key === "Delete") {
        event.preventDefault();
        const index = this.order.indexOf(symbol);
        const next = this.order[index + 1] ?? this.order[index - 1];
        this.actions.remove(symbol);
        if (next !== undefined) this.focus(next);
      }
    });
    // Drag and drop: a row dropped on the upper half of another goes before it, else after.
    let dragged = null;
    let marked = null;
    const unmark = () => {
      marked?.classList.remove("drop-before", "drop-after");
      marked = null;
    };
    body.addEventListener("dragstart", (event) => {
      dragged = symbolOf(event.target);
      if (!dragged) return;
      event.dataTransfer.effectAllowed = "move";
      event.dataTransfer.setData("text/plain", dragged);
      event.target.classList.add("dragging");
    });
    body.addEventListener("dragover", (event) => {
      const tr = event.target.closest?.(".row");
      if (!dragged || !tr) return;
      event.preventDefault();
      const box = tr.getBoundingClientRect();
      const before = event.clientY < box.top + box.height / 2;
      if (marked !== tr) unmark();
      marked = tr;
      tr.classList.toggle("drop-before", before);
      tr.classList.toggle("drop-after", !before);
    });
    body.addEventListener("drop", (event) => {
      const tr = event.target.closest?.(".row");
      if (!dragged || !tr) return;
      event.preventDefault();
      const order = this.order.filter((s) => s !== dragged);
      const box = tr.getBoundingClientRect();
      let index = order.indexOf(tr.dataset.symbol);
      if (event.clientY >= box.top + box.height / 2) index += 1;
      unmark();
      if (index >= 0 && tr.dataset.symbol !== dragged) this.actions.moveTo(dragged, index);
    });
    body.addEventListener("dragend", (event) => {
      event.target.classList?.remove("dragging");
      unmark();
      dragged = null;
    });
  }
}
