/**
 * A small, strict XML 1.0 parser for NVIDIA RIMs (SWID tags with an enveloped XML signature). It keeps
 * exactly what Canonical XML needs (elements with attributes in source order, text, processing
 * instructions; comments are kept so canonicalization can drop them) and refuses what a signed RIM
 * never needs: a DOCTYPE (so no entity expansion, no external entities), undeclared entity references,
 * unbound namespace prefixes, duplicate attributes. Written here rather than taken from an npm DOM so
 * that the RIM verifier runs unchanged in browsers on Web Crypto alone.
 */

export const XML_NS = 'http://www.w3.org/XML/1998/namespace';

export interface XmlAttribute {
  /** Qualified name as written (`ns1:BindingSpec`, `xmlns:ds`). */
  name: string;
  value: string;
}

export interface XmlElement {
  type: 'element';
  name: string;
  /** Attributes and namespace declarations, in source order. */
  attributes: XmlAttribute[];
  children: XmlNode[];
  parent: XmlElement | undefined;
}

export interface XmlText {
  type: 'text';
  value: string;
}

export interface XmlPi {
  type: 'pi';
  target: string;
  data: string;
}

export interface XmlComment {
  type: 'comment';
  value: string;
}

export type XmlNode = XmlElement | XmlText | XmlPi | XmlComment;

export interface XmlDocument {
  /** Top-level nodes in order (the root element, and any PIs / comments around it). */
  children: XmlNode[];
  root: XmlElement;
}

export class XmlError extends Error {
  override name = 'XmlError';
}

const NAME_START = /[A-Za-z_:\u00C0-\uFFFF]/;
const NAME_CHAR = /[A-Za-z0-9_:.\-\u00B7\u00C0-\uFFFF]/;
const PREDEFINED: Record<string, string> = { lt: '<', gt: '>', amp: '&', apos: "'", quot: '"' };
const MAX_DEPTH = 64;

export function parseXml(input: string): XmlDocument {
  // XML 1.0 §2.11: every CR LF and lone CR becomes LF before parsing.
  const s = input.replace(/^\uFEFF/, '').replace(/\r\n?/g, '\n');
  let pos = 0;
  const top: XmlNode[] = [];
  let root: XmlElement | undefined;
  const stack: XmlElement[] = [];

  const fail = (msg: string): never => {
    const line = s.slice(0, pos).split('\n').length;
    throw new XmlError(`XML line ${line}: ${msg}`);
  };
  const startsWith = (t: string) => s.startsWith(t, pos);
  const readName = (): string => {
    const start = pos;
    if (pos >= s.length || !NAME_START.test(s[pos]!)) fail('expected a name');
    pos++;
    while (pos < s.length && NAME_CHAR.test(s[pos]!)) pos++;
    return s.slice(start, pos);
  };
  const skipSpace = (): boolean => {
    const start = pos;
    while (pos < s.length && (s[pos] === ' ' || s[pos] === '\t' || s[pos] === '\n')) pos++;
    return pos > start;
  };
  const decode = (raw: string, inAttribute: boolean): string => {
    let out = '';
    for (let i = 0; i < raw.length; i++) {
      const c = raw[i]!;
      if (c === '&') {
        const end = raw.indexOf(';', i);
        if (end < 0) fail('unterminated reference');
        const ref = raw.slice(i + 1, end);
        if (ref.startsWith('#x')) out += codePoint(Number.parseInt(ref.slice(2), 16), ref);
        else if (ref.startsWith('#')) out += codePoint(Number.parseInt(ref.slice(1), 10), ref);
        else if (ref in PREDEFINED) out += PREDEFINED[ref];
        else fail(`undeclared entity &${ref};`);
        i = end;
      } else if (c === '<' && inAttribute) {
        fail('"<" in an attribute value');
      } else if (inAttribute && (c === '\t' || c === '\n')) {
        // Attribute-value normalization (§3.3.3) for CDATA attributes: literal white space → space.
        out += ' ';
      } else {
        out += c;
      }
    }
    return out;
  };
  const codePoint = (n: number, ref: string): string => {
    if (!Number.isInteger(n) || n < 1 || n > 0x10ffff || (n >= 0xd800 && n <= 0xdfff)) {
      fail(`invalid character reference &${ref};`);
    }
    return String.fromCodePoint(n);
  };
  const append = (node: XmlNode) => {
    const parent = stack[stack.length - 1];
    if (parent) {
      if (node.type === 'element') node.parent = parent;
      parent.children.push(node);
      return;
    }
    if (node.type === 'text') {
      if (/[^ \t\n]/.test(node.value)) fail('text outside the root element');
      return;
    }
    if (node.type === 'element') {
      if (root) fail('more than one root element');
      root = node;
    }
    top.push(node);
  };

  if (startsWith('<?xml')) {
    const end = s.indexOf('?>', pos);
    if (end < 0) fail('unterminated XML declaration');
    pos = end + 2;
  }
  while (pos < s.length) {
    if (startsWith('<!--')) {
      const end = s.indexOf('-->', pos + 4);
      if (end < 0) fail('unterminated comment');
      append({ type: 'comment', value: s.slice(pos + 4, end) });
      pos = end + 3;
    } else if (startsWith('<![CDATA[')) {
      if (stack.length === 0) fail('CDATA outside the root element');
      const end = s.indexOf(']]>', pos);
      if (end < 0) fail('unterminated CDATA section');
      append({ type: 'text', value: s.slice(pos + 9, end) });
      pos = end + 3;
    } else if (startsWith('<!')) {
      fail('DOCTYPE and other declarations are not accepted');
    } else if (startsWith('<?')) {
      pos += 2;
      const target = readName();
      if (target.toLowerCase() === 'xml') fail('misplaced XML declaration');
      const end = s.indexOf('?>', pos);
      if (end < 0) fail('unterminated processing instruction');
      append({ type: 'pi', target, data: s.slice(pos, end).replace(/^[ \t\n]+/, '') });
      pos = end + 2;
    } else if (startsWith('</')) {
      pos += 2;
      const name = readName();
      skipSpace();
      if (s[pos] !== '>') fail(`malformed end tag </${name}`);
      pos++;
      const open = stack.pop();
      if (!open || open.name !== name) fail(`end tag </${name}> does not match <${open?.name ?? ''}>`);
    } else if (s[pos] === '<') {
      pos++;
      const el: XmlElement = {
        type: 'element',
        name: readName(),
        attributes: [],
        children: [],
        parent: undefined,
      };
      for (;;) {
        const spaced = skipSpace();
        if (startsWith('/>') || s[pos] === '>') break;
        if (!spaced) fail(`expected white space before an attribute of <${el.name}>`);
        const name = readName();
        skipSpace();
        if (s[pos] !== '=') fail(`attribute ${name} has no value`);
        pos++;
        skipSpace();
        const quote = s[pos];
        if (quote !== '"' && quote !== "'") fail(`attribute ${name} value is not quoted`);
        const end = s.indexOf(quote!, pos + 1);
        if (end < 0) fail(`unterminated value of attribute ${name}`);
        if (el.attributes.some((a) => a.name === name)) fail(`duplicate attribute ${name}`);
        el.attributes.push({ name, value: decode(s.slice(pos + 1, end), true) });
        pos = end + 1;
      }
      append(el);
      if (startsWith('/>')) {
        pos += 2;
      } else {
        pos++;
        stack.push(el);
        if (stack.length > MAX_DEPTH) fail('elements nested too deeply');
      }
    } else {
      const end = s.indexOf('<', pos);
      const raw = s.slice(pos, end < 0 ? s.length : end);
      if (raw.includes(']]>')) fail('"]]>" in text');
      append({ type: 'text', value: decode(raw, false) });
      pos += raw.length;
    }
  }
  if (stack.length > 0) fail(`element <${stack[stack.length - 1]!.name}> is not closed`);
  if (!root) fail('no root element');
  const doc: XmlDocument = { children: top, root: root! };
  checkNamespaces(doc.root);
  return doc;
}

/** The namespace URI bound to `prefix` ('' = default) at `el`, or undefined when unbound. */
export function lookupNamespace(el: XmlElement | undefined, prefix: string): string | undefined {
  if (prefix === 'xml') return XML_NS;
  const attr = prefix === '' ? 'xmlns' : `xmlns:${prefix}`;
  for (let e = el; e; e = e.parent) {
    const decl = e.attributes.find((a) => a.name === attr);
    if (decl) return decl.value === '' && prefix === '' ? undefined : decl.value;
  }
  return undefined;
}

export function splitName(qname: string): { prefix: string; local: string } {
  const i = qname.indexOf(':');
  return i < 0 ? { prefix: '', local: qname } : { prefix: qname.slice(0, i), local: qname.slice(i + 1) };
}

export function isNamespaceDeclaration(name: string): boolean {
  return name === 'xmlns' || name.startsWith('xmlns:');
}

/** Namespace URI of an element (default namespace applies) or attribute (it does not). */
export function elementNamespace(el: XmlElement): string | undefined {
  return lookupNamespace(el, splitName(el.name).prefix);
}

export function attributeNamespace(el: XmlElement, attr: XmlAttribute): string | undefined {
  const { prefix } = splitName(attr.name);
  return prefix === '' ? undefined : lookupNamespace(el, prefix);
}

/** True when `el` is `{ns}local`. */
export function isElement(node: XmlNode, ns: string, local: string): node is XmlElement {
  return node.type === 'element' && splitName(node.name).local === local && elementNamespace(node) === ns;
}

export function childElements(el: XmlElement, ns: string, local: string): XmlElement[] {
  return el.children.filter((c): c is XmlElement => isElement(c, ns, local));
}

/** The value of attribute `{ns}local` (ns undefined = unqualified attribute). */
export function getAttribute(el: XmlElement, local: string, ns?: string): string | undefined {
  for (const a of el.attributes) {
    if (isNamespaceDeclaration(a.name)) continue;
    if (splitName(a.name).local === local && attributeNamespace(el, a) === ns) return a.value;
  }
  return undefined;
}

export function textContent(el: XmlElement): string {
  let out = '';
  for (const c of el.children) {
    if (c.type === 'text') out += c.value;
    else if (c.type === 'element') out += textContent(c);
  }
  return out;
}

function checkNamespaces(el: XmlElement): void {
  const { prefix } = splitName(el.name);
  if (prefix !== '' && lookupNamespace(el, prefix) === undefined) {
    throw new XmlError(`element <${el.name}> uses an unbound namespace prefix`);
  }
  const seen = new Set<string>();
  for (const a of el.attributes) {
    if (a.name.startsWith('xmlns:') && a.value === '') {
      throw new XmlError(`<${el.name}> undeclares prefix ${a.name.slice(6)} (not allowed in XML 1.0)`);
    }
    if (a.name === 'xmlns:xmlns' || (a.name === 'xmlns:xml' && a.value !== XML_NS)) {
      throw new XmlError(`<${el.name}> rebinds a reserved prefix`);
    }
    if (isNamespaceDeclaration(a.name)) continue;
    const ns = attributeNamespace(el, a);
    if (splitName(a.name).prefix !== '' && ns === undefined) {
      throw new XmlError(`attribute ${a.name} of <${el.name}> uses an unbound namespace prefix`);
    }
    const key = `${ns ?? ''}|${splitName(a.name).local}`;
    if (seen.has(key)) throw new XmlError(`attribute ${a.name} of <${el.name}> is given twice`);
    seen.add(key);
  }
  for (const c of el.children) if (c.type === 'element') checkNamespaces(c);
}
