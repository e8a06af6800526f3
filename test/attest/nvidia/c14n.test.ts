import { describe, expect, it } from 'vitest';
import { canonicalizeDocument, canonicalizeSubtree } from '../../../src/attest/nvidia/c14n.js';
import { parseXml, type XmlElement, XmlError } from '../../../src/attest/nvidia/xml.js';

const c14n = (xml: string) => canonicalizeDocument(parseXml(xml));

describe('Canonical XML 1.1 (without comments)', () => {
  it('sorts namespace declarations (default first) before attributes sorted by namespace URI, local name', () => {
    expect(c14n('<a b="1" a="2" xmlns:z="u2" xmlns="u1" z:c="3" xmlns:y="u0" y:d="4"><e/></a>')).toBe(
      '<a xmlns="u1" xmlns:y="u0" xmlns:z="u2" a="2" b="1" y:d="4" z:c="3"><e></e></a>',
    );
  });

  it('escapes text and attribute values as the specification says', () => {
    expect(c14n(`<a x="&quot;&#9;&#10;&#13;&lt;&gt;'">&lt;&amp;&gt;"'&#13;</a>`)).toBe(
      `<a x="&quot;&#x9;&#xA;&#xD;&lt;>'">&lt;&amp;&gt;"'&#xD;</a>`,
    );
  });

  it('normalizes line ends and literal white space in attribute values', () => {
    expect(c14n('<a x="p\r\nq\tr">x\r\ny\rz</a>')).toBe('<a x="p q r">x\ny\nz</a>');
  });

  it('drops redundant namespace declarations and renders xmlns="" only to undo a default', () => {
    expect(c14n('<a xmlns:p="u"><p:b xmlns:p="u"/></a>')).toBe('<a xmlns:p="u"><p:b></p:b></a>');
    expect(c14n('<a xmlns="u"><b xmlns=""/></a>')).toBe('<a xmlns="u"><b xmlns=""></b></a>');
    expect(c14n('<a><b xmlns=""/></a>')).toBe('<a><b></b></a>');
  });

  it('replaces CDATA by escaped text, drops comments, keeps PIs (with line feeds outside the root)', () => {
    expect(
      c14n('<?xml version="1.0"?><?pi x?><!--c--><a><![CDATA[<x>&]]><!--in--><?p d?></a><!--d--><?q?>'),
    ).toBe('<?pi x?>\n<a>&lt;x&gt;&amp;<?p d?></a>\n<?q?>');
  });

  it('a subtree carries every namespace in scope and inherited xml:lang', () => {
    const doc = parseXml('<r xmlns="u" xmlns:p="v" xmlns:q="w" xml:lang="en"><p:s a="1"><t/></p:s></r>');
    const s = doc.root.children[0] as XmlElement;
    expect(canonicalizeSubtree(s)).toBe(
      '<p:s xmlns="u" xmlns:p="v" xmlns:q="w" a="1" xml:lang="en"><t></t></p:s>',
    );
  });

  it('leaves out the omitted element (enveloped signature) but keeps the text around it', () => {
    const doc = parseXml('<a>\n  <b/>\n<sig><x/></sig></a>');
    const sig = doc.root.children[3] as XmlElement;
    expect(canonicalizeDocument(doc, sig)).toBe('<a>\n  <b></b>\n</a>');
  });
});

describe('strict XML parser', () => {
  for (const [what, xml] of [
    ['DOCTYPE', '<!DOCTYPE a><a/>'],
    ['undeclared entity', '<a>&foo;</a>'],
    ['unbound prefix', '<p:a/>'],
    ['unbound attribute prefix', '<a p:x="1"/>'],
    ['duplicate attribute', '<a x="1" x="2"/>'],
    ['same expanded attribute twice', '<a xmlns:p="u" xmlns:q="u" p:x="1" q:x="2"/>'],
    ['mismatched end tag', '<a></b>'],
    ['unclosed element', '<a><b></b>'],
    ['two roots', '<a/><b/>'],
    ['text outside the root', 'x<a/>'],
    ['"<" in an attribute', '<a x="<"/>'],
    ['invalid character reference', '<a>&#0;</a>'],
    ['undeclaring a prefix', '<a xmlns:p="u"><b xmlns:p=""/></a>'],
  ]) {
    it(`refuses ${what}`, () => {
      expect(() => parseXml(xml!)).toThrow(XmlError);
    });
  }
});
