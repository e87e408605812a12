// The watchlist: which symbols the board shows, in which order. Kept in localStorage; a
// `?symbols=A,B` query overrides it, so a link opens a given view. No DOM here.

const STORAGE_KEY = "feed.watchlist.v1";
const MAX_SYMBOL = 64; // the protocol's longest symbol

/**
 * Symbols from text a person typed or a URL carried: split on commas, trimmed (a symbol may
 * hold a space, never at its ends), duplicates dropped (first kept), none longer than the
 * protocol allows.
 * @param {string} text
 * @returns {string[]}
 */
export function parseSymbols(text) {
  const seen = new Set();
  for (const part of text.split(",")) {
    const symbol = part.trim();
    if (symbol && symbol.length <= MAX_SYMBOL) seen.add(symbol);
  }
  return [...seen];
}

export class Watchlist {
  /**
   * @param {Storage|null} storage where the list is kept (null: nowhere)
   * @param {URLSearchParams} params the page's query: `symbols` overrides what is stored
   */
  constructor(storage, params) {
    this.storage = storage;
    /** @type {string[]} */
    this.symbols = [];
    /** Where the list came from: "url", "saved", "default", or "none" (no list yet). */
    this.source = "none";
    const fromUrl = params.get("symbols");
    /** Opened with `?symbols=`: edits are mirrored into the address, so it stays true. */
    this.inUrl = fromUrl !== null;
    if (fromUrl !== null) {
      this.symbols = parseSymbols(fromUrl);
      this.source = "url";
      return;
    }
    const saved = this.#load();
    if (saved !== null) {
      this.symbols = saved;
      this.source = "saved";
    }
  }

  /** True when the list is neither in the URL nor stored: the caller picks a default. */
  get needsDefault() {
    return this.source === "none";
  }

  /** Set the first list (a default) without saving it: it is not the user's choice yet. */
  setDefault(symbols) {
    this.symbols = [...new Set(symbols)];
    this.source = "default";
  }

  has(symbol) {
    return this.symbols.includes(symbol);
  }

  /** Append the symbols not already held; returns those added. */
  add(symbols) {
    const added = symbols.filter((s, i) => !this.symbols.includes(s) && symbols.indexOf(s) === i);
    if (added.length) {
      this.symbols.push(...added);
      this.#changed();
    }
    return added;
  }

  /** Remove one; returns whether it was there. */
  remove(symbol) {
    const i = this.symbols.indexOf(symbol);
    if (i < 0) return false;
    this.symbols.splice(i, 1);
    this.#changed();
    return true;
  }

  /** Move `symbol` to position `index` (clamped); returns whether anything moved. */
  moveTo(symbol, index) {
    const from = this.symbols.indexOf(symbol);
    const to = Math.max(0, Math.min(this.symbols.length - 1, index));
    if (from < 0 || from === to) return false;
    this.symbols.splice(from, 1);
    this.symbols.splice(to, 0, symbol);
    this.#changed();
    return true;
  }

  /** Move `symbol` by `delta` places (−1: up). */
  move(symbol, delta) {
    return this.moveTo(symbol, this.symbols.indexOf(symbol) + delta);
  }

  /** The query string that opens this list: `?symbols=A,B`. */
  query() {
    return "?symbols=" + this.symbols.map(encodeURIComponent).join(",");
  }

  #changed() {
    // An edit makes the list the user's: saved, whatever it came from.
    this.source = "saved";
    if (!this.storage) return;
    try {
      this.storage.setItem(STORAGE_KEY, JSON.stringify(this.symbols));
    } catch {
      // Storage full or refused (private mode): the list lives for this page only.
    }
  }

  #load() {
    if (!this.storage) return null;
    try {
      const value = JSON.parse(this.storage.getItem(STORAGE_KEY) ?? "null");
      if (Array.isArray(value) && value.every((s) => typeof s === "string")) {
        return parseSymbols(value.join(","));
      }
    } catch {
      // Unreadable: as if nothing were stored.
    }
    return null;
  }
}
