import { nvidiaFuzz } from './fuzz-properties.js';

nvidiaFuzz({ report: 4000, rim: 2000, envelope: 3000 });
