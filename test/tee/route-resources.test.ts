/** routeResources: each repository's resources from its own broker, everything else from the primary. */
import { describe, expect, it } from 'vitest';
import { AgentError, type ResourceSource, resourcePathOf, routeResources } from '../../src/tee/keys.js';

class Fake implements ResourceSource {
  asked: string[] = [];
  constructor(
    readonly name: string,
    private readonly refuse = false,
  ) {}
  async getResource(path: string): Promise<Uint8Array> {
    this.asked.push(path);
    if (this.refuse) throw new Error(`resource ${path} refused by the key broker (403): denied by policy`);
    return new TextEncoder().encode(`${this.name}:${path}`);
  }
  async token(): Promise<string> {
    return `token-of-${this.name}`;
  }
  /** A method beyond ResourceSource (as KbsClient's checkpoint and receipt calls): stays the primary's. */
  whoAmI(): string {
    return this.name;
  }
}

const text = (b: Uint8Array) => new TextDecoder().decode(b);

describe('routeResources', () => {
  it('sends a routed repository to its broker, the rest and the token to the primary', async () => {
    const vendor = new Fake('vendor');
    const acme = new Fake('acme');
    const r = routeResources(vendor, new Map([['acme', acme]]));
    expect(text(await r.getResource('acme/adapters/kek'))).toBe('acme:acme/adapters/kek');
    expect(text(await r.getResource('vendor/models/kek'))).toBe('vendor:vendor/models/kek');
    expect(text(await r.getResource('acmecorp/x/y'))).toBe('vendor:acmecorp/x/y');
    expect(await r.token()).toBe('token-of-vendor');
    expect(r.whoAmI()).toBe('vendor');
    expect(vendor.asked).toEqual(['vendor/models/kek', 'acmecorp/x/y']);
    expect(acme.asked).toEqual(['acme/adapters/kek']);
  });

  it('says which broker refused', async () => {
    const r = routeResources(new Fake('vendor'), new Map([['acme', new Fake('acme', true)]]));
    await expect(r.getResource('acme/adapters/kek')).rejects.toThrow(
      'resource acme/adapters/kek refused by the key broker (403): denied by policy (the broker routed for repository acme)',
    );
  });

  it('without routes is the primary itself; a bad repository name is refused', () => {
    const p = new Fake('vendor');
    expect(routeResources(p, new Map())).toBe(p);
    expect(() => routeResources(p, new Map([['a/b', new Fake('x')]]))).toThrow(AgentError);
    for (const bad of ['.', '..', '.acme'])
      expect(() => routeResources(p, new Map([[bad, new Fake('x')]])), bad).toThrow(
        /not a key broker repository name/,
      );
  });

  it("refuses '.' and '..' segments: routing reads the raw first segment, the broker's URL resolves them", async () => {
    for (const uri of [
      'kbs:///./acme/kek',
      'kbs:///../acme/kek',
      'kbs:///vendor/../kek',
      'kbs:///acme/adapters/..',
      'kbs:///acme/./kek',
      'kbs:///.hidden/a/b',
    ])
      expect(() => resourcePathOf(uri), uri).toThrow(
        expect.objectContaining({
          code: 'bad-uri',
          message: expect.stringMatching(/no segment starting with '\.'/),
        }),
      );
    expect(resourcePathOf('kbs:///acme.corp/adapters/kek.v2')).toBe('acme.corp/adapters/kek.v2');
    // A path that did not come through resourcePathOf is refused by the router too, broker untouched.
    const vendor = new Fake('vendor');
    const acme = new Fake('acme');
    const r = routeResources(vendor, new Map([['acme', acme]]));
    for (const path of ['./acme/kek', 'x/../acme/kek', '../acme/x/y'])
      await expect(r.getResource(path), path).rejects.toMatchObject({ code: 'bad-uri' });
    expect(vendor.asked).toEqual([]);
    expect(acme.asked).toEqual([]);
  });
});
