"""Scale out with Dask: fit on a sample in memory, predict and extract features block by block.

Needs the ``dask`` extra (``pip install -e ".[dask]"``). A real cluster is the same code
with ``Client("tcp://scheduler:8786")``; here an in-process cluster on synthetic images
(about half a minute on a 2-core CPU).
"""

import tempfile

import dask.array as da
import numpy as np
from distributed import Client, LocalCluster
from sklearn.pipeline import Pipeline

from skfg import CNNFeatureExtractor, SoftmaxClassifier
from skfg.datasets import make_fine_grained
from skfg.parallel import ParallelPostFit, extract_features

X_train, y_train = make_fine_grained(n_classes=5, n_per_class=12, image_size=96, random_state=0)
X_test, y_test = make_fine_grained(n_classes=5, n_per_class=20, image_size=96, random_state=1)

with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster, \
        Client(cluster) as client:
    # 1. Fit in memory on a sample; apply to a Dask array, 25 images per task.
    model = ParallelPostFit(Pipeline([("cnn", CNNFeatureExtractor(image_size=96)),
                                      ("clf", SoftmaxClassifier(random_state=0))]))
    model.fit(X_train, y_train)
    images = da.from_array(X_test, chunks=(25, -1, -1, -1))
    predicted = model.predict(images)  # lazy
    print(f"{predicted.npartitions} tasks; accuracy {np.mean(predicted.compute() == y_test):.2f}")

    # 2. Features into a chunked store on disk: a second call computes only missing chunks.
    with tempfile.TemporaryDirectory() as folder:
        extractor = model.estimator_.named_steps["cnn"]
        store = extract_features(extractor, X_test, folder, chunk_size=32, client=client)
        print(f"{store.n_chunks} chunks of features on disk, missing: {store.missing_chunks()}")
        F = store.to_dask()
        print("features", F.shape, "equal to in-memory:", np.allclose(F.compute(), extractor.transform(X_test),
                                                                       atol=1e-5))
