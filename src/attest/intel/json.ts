/**
 * Intel signs TCB info and QE identity as the exact bytes of one member of the response object
 * ({"tcbInfo":{…},"signature":"…"}). This finds that member's byte span without re-serialising, so
 * the signature is checked over what Intel sent and the value parsed is that same span.
 */

const WS = new Set([0x20, 0x09, 0x0a, 0x0d]);

class Scanner {
  pos = 0;
  constructor(readonly b: Uint8Array) {}
  ws(): void {
    while (this.pos < this.b.length && WS.has(this.b[this.pos]!)) this.pos++;
  }
  expect(ch: number): void {
    if (this.b[this.pos] !== ch)
      throw new SyntaxError(`expected '${String.fromCharCode(ch)}' at byte ${this.pos}`);
    this.pos++;
  }
  string(): string {
    const start = this.pos;
    this.expect(0x22);
    while (this.pos < this.b.length) {
      const c = this.b[this.pos++]!;
      if (c === 0x5c) this.pos++;
      else if (c === 0x22)
        return JSON.parse(new TextDecoder().decode(this.b.subarray(start, this.pos))) as string;
    }
    throw new SyntaxError('unterminated string');
  }
  value(): void {
    const c = this.b[this.pos];
    if (c === 0x22) {
      this.string();
      return;
    }
    if (c === 0x7b || c === 0x5b) {
      let depth = 0;
      while (this.pos < this.b.length) {
        const d = this.b[this.pos]!;
        if (d === 0x22) {
          this.string();
          continue;
        }
        this.pos++;
        if (d === 0x7b || d === 0x5b) depth++;
        else if (d === 0x7d || d === 0x5d) {
          depth--;
          if (depth === 0) return;
        }
      }
      throw new SyntaxError('unterminated object or array');
    }
    const start = this.pos;
    while (
      this.pos < this.b.length &&
      !WS.has(this.b[this.pos]!) &&
      !',}]'.includes(String.fromCharCode(this.b[this.pos]!))
    ) {
      this.pos++;
    }
    if (this.pos === start) throw new SyntaxError(`value expected at byte ${start}`);
  }
}

/**
 * Byte spans of the members of a top-level JSON object. The text must also be valid JSON as a whole
 * and may not repeat a member name (a repeated "tcbInfo" would let the signed and the used value differ).
 */
export function topLevelSpans(bytes: Uint8Array): Map<string, Uint8Array> {
  JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes));
  const s = new Scanner(bytes);
  const out = new Map<string, Uint8Array>();
  s.ws();
  s.expect(0x7b);
  s.ws();
  if (bytes[s.pos] === 0x7d) return out;
  for (;;) {
    s.ws();
    const key = s.string();
    s.ws();
    s.expect(0x3a);
    s.ws();
    const start = s.pos;
    s.value();
    if (out.has(key)) throw new SyntaxError(`member "${key}" appears twice`);
    out.set(key, bytes.subarray(start, s.pos));
    s.ws();
    if (bytes[s.pos] === 0x2c) {
      s.pos++;
      continue;
    }
    s.expect(0x7d);
    return out;
  }
}
