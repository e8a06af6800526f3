import { nvidiaFuzz } from './fuzz-properties.js';

// At most 200 runs per property in the unit project; fuzz.slow.test.ts runs thousands.
nvidiaFuzz({ report: 150, rim: 100, envelope: 100 });
