#!/usr/bin/env node
import { main, runBinary } from '../dist/cli/main.js';

runBinary(() => main(process.argv.slice(2)));
