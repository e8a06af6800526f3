/**
 * Canonical XML 1.1 without comments (https://www.w3.org/TR/xml-c14n11/), the algorithm NVIDIA RIMs name
 * for both their SignedInfo and their single enveloped Reference. Only the two node sets an enveloped
 * XML signature needs are supported: a whole document minus one element (the Signature), and one
 * element's subtree (SignedInfo). For these, C14N 1.1 is inclusive canonicalization: the apex element
 * carries every namespace in scope and the inheritable xml:lang / xml:space attributes of its
 * ancestors; descendants carry only declarations that change a binding already rendered.
 */
import {
  attributeNamespace,
  isNamespaceDeclaration,
  splitName,
  XML_NS,
  type XmlAttribute,
  type XmlDocument,
  type XmlElement,
  type XmlNode,
} from './xml.js';

/** The canonical form of the whole document, leaving out `omit` and its subtree (enveloped signature). */
export function canonicalizeDocument(doc: XmlDocument, omit?: XmlElement): string {
  const out: string[] = [];
  let afterRoot = false;
  for (const node of doc.children) {
    if (node.type === 'element') {
      writeElement(node, new Map(), out, omit, true);
      afterRoot = true;
    } else if (node.type === 'pi') {
      // §2.1 of C14N: PIs outside the document element are separated from it by a line feed.
      out.push(afterRoot ? `\n${pi(node.target, node.data)}` : `${pi(node.target, node.data)}\n`);
    }
  }
  return out.join('');
}

/** The canonical form of one element's subtree as a document subset (e.g. ds:SignedInfo). */
export function canonicalizeSubtree(el: XmlElement): string {
  const out: string[] = [];
  writeElement(el, new Map(), out, undefined, true);
  return out.join('');
}

/** Prefix → URI of every namespace in scope at `el` ('' = default), nearest declaration winning. */
function namespacesInScope(el: XmlElement): Map<string, string> {
  const scope = new Map<string, string>();
  for (let e: XmlElement | undefined = el; e; e = e.parent) {
    for (const a of e.attributes) {
      if (!isNamespaceDeclaration(a.name)) continue;
      const prefix = a.name === 'xmlns' ? '' : a.name.slice(6);
      // The xml prefix is bound by definition; Canonical XML never renders its declaration.
      if (prefix !== 'xml' && !scope.has(prefix)) scope.set(prefix, a.value);
    }
  }
  return scope;
}

function writeElement(
  el: XmlElement,
  rendered: Map<string, string>,
  out: string[],
  omit: XmlElement | undefined,
  apex: boolean,
): void {
  if (el === omit) return;
  const scope = namespacesInScope(el);
  const nsOut: [string, string][] = [];
  const nowRendered = new Map(rendered);
  for (const [prefix, uri] of scope) {
    const before = rendered.get(prefix);
    if (prefix === '' && uri === '') {
      // xmlns="" is output only to undo a non-empty default namespace rendered above.
      if (before !== undefined && before !== '') nsOut.push(['', '']);
      nowRendered.set('', '');
      continue;
    }
    if (before !== uri) nsOut.push([prefix, uri]);
    nowRendered.set(prefix, uri);
  }
  nsOut.sort((a, b) => compareCodeUnits(a[0], b[0]));

  const attrs: { ns: string; local: string; attr: XmlAttribute }[] = [];
  for (const a of el.attributes) {
    if (isNamespaceDeclaration(a.name)) continue;
    attrs.push({ ns: attributeNamespace(el, a) ?? '', local: splitName(a.name).local, attr: a });
  }
  if (apex) {
    // C14N 1.1 §2.4: a subset's apex inherits xml:lang and xml:space from omitted ancestors.
    for (const local of ['lang', 'space']) {
      if (attrs.some((x) => x.ns === XML_NS && x.local === local)) continue;
      for (let e = el.parent; e; e = e.parent) {
        const hit = e.attributes.find((a) => a.name === `xml:${local}`);
        if (hit) {
          attrs.push({ ns: XML_NS, local, attr: hit });
          break;
        }
      }
    }
  }
  attrs.sort((a, b) => compareCodeUnits(a.ns, b.ns) || compareCodeUnits(a.local, b.local));

  out.push(`<${el.name}`);
  for (const [prefix, uri] of nsOut) {
    out.push(prefix === '' ? ` xmlns="${escapeAttr(uri)}"` : ` xmlns:${prefix}="${escapeAttr(uri)}"`);
  }
  for (const { attr } of attrs) out.push(` ${attr.name}="${escapeAttr(attr.value)}"`);
  out.push('>');
  for (const child of el.children) writeChild(child, nowRendered, out, omit);
  out.push(`</${el.name}>`);
}

function writeChild(node: XmlNode, rendered: Map<string, string>, out: string[], omit?: XmlElement): void {
  switch (node.type) {
    case 'element':
      writeElement(node, rendered, out, omit, false);
      return;
    case 'text':
      out.push(escapeText(node.value));
      return;
    case 'pi':
      out.push(pi(node.target, node.data));
      return;
    case 'comment':
      return; // canonicalization without comments
  }
}

function pi(target: string, data: string): string {
  return data === '' ? `<?${target}?>` : `<?${target} ${data}?>`;
}

/** Canonical XML orders names by UCS code point; for the BMP names of RIMs, UTF-16 units agree. */
function compareCodeUnits(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

function escapeText(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/\r/g, '&#xD;');
}

function escapeAttr(s: string): string {
  return s
    .replace(/&/g, '&amp;')
    .replace(/</g, '&lt;')
    .replace(/"/g, '&quot;')
    .replace(/\t/g, '&#x9;')
    .replace(/\n/g, '&#xA;')
    .replace(/\r/g, '&#xD;');
}
