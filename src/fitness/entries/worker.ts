/** The fitness API in workerd (wrangler.toml `main`). */
import { createWorker } from '../../runtime/worker.js';
import { fitness } from '../app.js';

export default createWorker(fitness);
