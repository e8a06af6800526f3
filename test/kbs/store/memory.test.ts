import { MemoryStore } from '../../../src/kbs/store/memory.js';
import { storeConformance } from './conformance.js';

storeConformance('memory', async (opts) => new MemoryStore(opts));
