import { describe, expect, it } from 'vitest';
import { rimIds } from '../../../src/attest/nvidia/index.js';

const opaque = (o: { driverVersion?: string; vbiosVersion?: string; project?: string }) => ({
  fields: new Map<number, Uint8Array>(),
  opaqueDataVersion: 1,
  projectSku: '0001',
  chipSku: '001',
  ...o,
});

describe('RIM ids from a GPU report', () => {
  it("are NVIDIA's names for the driver and VBIOS", () => {
    expect(
      rimIds(
        'HOPPER',
        opaque({ driverVersion: '550.54.15', vbiosVersion: '96.00.5E.00.01', project: 'G520' }),
      ),
    ).toEqual({ driver: 'NV_GPU_DRIVER_GH100_550.54.15', vbios: 'NV_GPU_VBIOS_G520_0001_001_96005E0001' });
  });

  it('are not made from report strings that could leave a folder or a URL path', () => {
    // A report is printable ASCII only; `/`, `#` and `?` would reach file names and the RIM service URL.
    expect(rimIds('HOPPER', opaque({ driverVersion: '550.54.15#/../../victim/pwned' }))).toEqual({});
    expect(rimIds('HOPPER', opaque({ driverVersion: '550', vbiosVersion: '1.2', project: '../x' }))).toEqual({
      driver: 'NV_GPU_DRIVER_GH100_550',
    });
  });
});
