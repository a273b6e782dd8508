// Exact decimals for the API's amount strings: a BigInt of units and a scale (digits after
// the point). P&L recomputed in the browser is exact, as on the server: never a float.

export class Dec {
  constructor(units, scale) {
    this.units = units;
    this.scale = scale;
  }

  static parse(text) {
    if (text === null || text === undefined || text === "") return null;
    const match = /^([+-]?)(\d*)(?:\.(\d*))?$/.exec(String(text).trim());
    if (!match || (match[2] === "" && !match[3])) return null;
    const fraction = match[3] || "";
    const units = BigInt((match[2] || "0") + fraction);
    return new Dec(match[1] === "-" ? -units : units, fraction.length);
  }

  static zero() {
    return new Dec(0n, 0);
  }

  rescaled(scale) {
    return scale <= this.scale ? this : new Dec(this.units * 10n ** BigInt(scale - this.scale), scale);
  }

  // The same value without trailing zeros beyond `minScale` decimals.
  trimmed(minScale = 0) {
    let { units, scale } = this;
    while (scale > minScale && units % 10n === 0n) {
      units /= 10n;
      scale -= 1;
    }
    return new Dec(units, scale);
  }

  add(other) {
    const scale = Math.max(this.scale, other.scale);
    return new Dec(this.rescaled(scale).units + other.rescaled(scale).units, scale);
  }

  sub(other) {
    return this.add(other.neg());
  }

  neg() {
    return new Dec(-this.units, this.scale);
  }

  mul(other) {
    return new Dec(this.units * other.units, this.scale + other.scale);
  }

  // The quotient rounded half away from zero to `scale` digits (for display-only averages).
  div(other, scale = 6) {
    if (other.units === 0n) return null;
    const numerator = this.units * 10n ** BigInt(other.scale + scale + 1);
    const denominator = other.units * 10n ** BigInt(this.scale);
    const quotient = numerator / denominator;
    return new Dec(roundLastDigit(quotient), scale);
  }

  cmp(other) {
    const difference = this.sub(other).units;
    return difference > 0n ? 1 : difference < 0n ? -1 : 0;
  }

  sign() {
    return this.units > 0n ? 1 : this.units < 0n ? -1 : 0;
  }

  isMultipleOf(step) {
    if (step.units === 0n) return true;
    const scale = Math.max(this.scale, step.scale);
    return this.rescaled(scale).units % step.rescaled(scale).units === 0n;
  }

  // Rounded half away from zero to `digits` decimals, with thousands separators if asked.
  format(digits, { group = false } = {}) {
    let units = this.units;
    if (digits < this.scale) {
      units = roundLastDigit(units / 10n ** BigInt(this.scale - digits - 1));
    } else {
      units *= 10n ** BigInt(digits - this.scale);
    }
    const negative = units < 0n;
    const text = (negative ? -units : units).toString().padStart(digits + 1, "0");
    let whole = text.slice(0, text.length - digits);
    if (group) whole = whole.replace(/\B(?=(\d{3})+(?!\d))/g, ",");
    const fraction = digits > 0 ? "." + text.slice(text.length - digits) : "";
    return (negative && units !== 0n ? "-" : "") + whole + fraction;
  }

  toString() {
    return this.format(this.scale);
  }

  toNumber() {
    return Number(this.toString());
  }
}

// Drop the last decimal digit of `units`, rounding half away from zero.
function roundLastDigit(units) {
  const last = units % 10n;
  const kept = units / 10n;
  if (last >= 5n) return kept + 1n;
  if (last <= -5n) return kept - 1n;
  return kept;
}

// A money amount for people: two decimals, grouped; an em dash when unknown.
export function money(value) {
  const amount = typeof value === "string" ? Dec.parse(value) : value;
  return amount ? amount.format(2, { group: true }) : "—";
}

// A price or quantity as the server wrote it (already on its grid); an em dash when absent.
export function plain(text) {
  return text === null || text === undefined || text === "" ? "—" : String(text);
}

// "up", "down" or "" for the sign of an amount (for colouring P&L).
export function tone(value) {
  const amount = typeof value === "string" ? Dec.parse(value) : value;
  if (!amount) return "";
  return amount.sign() > 0 ? "up" : amount.sign() < 0 ? "down" : "";
}
